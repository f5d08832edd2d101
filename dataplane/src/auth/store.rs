//! The credentials store: users, realms and their HA1 values.
//!
//! HA1 is RFC 7616 §3.4.2 `H(username ":" realm ":" passwd)` (RFC 2617
//! §3.2.2.2 for MD5). The file format is documented in the [module
//! above](super).

use md5::Md5;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Why a users file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read users file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("users file {path}: {inner}")]
    InFile {
        path: PathBuf,
        inner: Box<AuthError>,
    },
    #[error("invalid TOML: {message}")]
    Syntax { message: String },
    #[error("[[user]] entry #{index} ({name}): {message}")]
    Entry {
        /// 1-based position of the entry in the file.
        index: usize,
        /// The entry's name, quoted, or `<no name>`.
        name: String,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsersFile {
    #[serde(default)]
    user: Vec<UserEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserEntry {
    name: Option<String>,
    password: Option<String>,
    ha1: Option<String>,
    realm: Option<String>,
}

struct User {
    realm: String,
    /// MD5 HA1 in the user's realm (given or computed).
    ha1_md5: [u8; 16],
    /// SHA-256 HA1 in the user's realm, when the password is known.
    ha1_sha256: Option<[u8; 32]>,
    /// SHA-256 of the password, when known (for constant-time Basic checks
    /// that do not leak the password length).
    password_hash: Option<[u8; 32]>,
}

/// Immutable users database; share it as `Arc<CredentialStore>` and swap the
/// `Arc` to reload.
pub struct CredentialStore {
    default_realm: String,
    users: HashMap<String, User>,
    all_have_passwords: bool,
}

impl fmt::Debug for CredentialStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print secrets.
        f.debug_struct("CredentialStore")
            .field("default_realm", &self.default_realm)
            .field("users", &self.users.len())
            .finish()
    }
}

pub(crate) fn md5_ha1(user: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

pub(crate) fn sha256_ha1(user: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

impl CredentialStore {
    /// Reads and parses a users file; errors name the file and the entry.
    pub fn load(path: impl AsRef<Path>, default_realm: &str) -> Result<CredentialStore, AuthError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, default_realm).map_err(|e| AuthError::InFile {
            path: path.to_path_buf(),
            inner: Box::new(e),
        })
    }

    /// Parses users-file text; users without `realm` belong to
    /// `default_realm`.
    pub fn from_toml(text: &str, default_realm: &str) -> Result<CredentialStore, AuthError> {
        let file: UsersFile = toml::from_str(text).map_err(|e| AuthError::Syntax {
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut users = HashMap::with_capacity(file.user.len());
        let mut all_have_passwords = true;
        for (i, entry) in file.user.into_iter().enumerate() {
            let index = i + 1;
            let label = match &entry.name {
                Some(n) => format!("{n:?}"),
                None => "<no name>".to_string(),
            };
            let err = |message: &str| AuthError::Entry {
                index,
                name: label.clone(),
                message: message.to_string(),
            };
            let name = entry.name.clone().ok_or_else(|| err("missing `name`"))?;
            if name.is_empty() {
                return Err(err("`name` is empty"));
            }
            if name.contains(':') {
                return Err(err("`name` must not contain ':'"));
            }
            if name.chars().any(char::is_control) {
                return Err(err("`name` must not contain control characters"));
            }
            let realm = match entry.realm {
                Some(r) if r.is_empty() => return Err(err("`realm` is empty")),
                Some(r) if r.chars().any(|c| c.is_control() || c == '"' || c == '\\') => {
                    return Err(err(
                        "`realm` must not contain control characters, '\"' or '\\'",
                    ));
                }
                Some(r) => r,
                None => default_realm.to_string(),
            };
            let user = match (entry.password, entry.ha1) {
                (Some(_), Some(_)) => {
                    return Err(err("has both `password` and `ha1`; give only one"));
                }
                (None, None) => return Err(err("needs `password` or `ha1`")),
                (Some(pw), None) => User {
                    ha1_md5: md5_ha1(&name, &realm, &pw),
                    ha1_sha256: Some(sha256_ha1(&name, &realm, &pw)),
                    password_hash: Some(Sha256::digest(pw.as_bytes()).into()),
                    realm,
                },
                (None, Some(ha1)) => {
                    let mut bytes = [0u8; 16];
                    hex::decode_to_slice(ha1.trim(), &mut bytes)
                        .map_err(|_| err("`ha1` must be 32 hex digits (MD5)"))?;
                    all_have_passwords = false;
                    User {
                        ha1_md5: bytes,
                        ha1_sha256: None,
                        password_hash: None,
                        realm,
                    }
                }
            };
            if users.insert(name, user).is_some() {
                return Err(err("duplicate user name"));
            }
        }
        Ok(CredentialStore {
            default_realm: default_realm.to_string(),
            users,
            all_have_passwords,
        })
    }

    /// An empty store (every check fails).
    pub fn empty(default_realm: &str) -> CredentialStore {
        CredentialStore {
            default_realm: default_realm.to_string(),
            users: HashMap::new(),
            all_have_passwords: true,
        }
    }

    /// The realm users without their own `realm` belong to.
    pub fn default_realm(&self) -> &str {
        &self.default_realm
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the store has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The realm `user` belongs to, if the user exists.
    pub fn realm_of(&self, user: &str) -> Option<&str> {
        self.users.get(user).map(|u| u.realm.as_str())
    }

    /// Whether every user can authenticate with SHA-256 Digest (every entry
    /// has a password rather than an MD5 `ha1`). Servers offer SHA-256
    /// challenges only then, so a client picking the first challenge it
    /// supports never lands on one its user cannot pass.
    pub fn supports_sha256(&self) -> bool {
        self.all_have_passwords
    }

    /// MD5 HA1 of `user` in `realm` (None when unknown or in another realm).
    pub fn ha1_md5(&self, user: &str, realm: &str) -> Option<[u8; 16]> {
        self.users
            .get(user)
            .filter(|u| u.realm == realm)
            .map(|u| u.ha1_md5)
    }

    /// SHA-256 HA1 of `user` in `realm` (only for users with a password).
    pub fn ha1_sha256(&self, user: &str, realm: &str) -> Option<[u8; 32]> {
        self.users
            .get(user)
            .filter(|u| u.realm == realm)
            .and_then(|u| u.ha1_sha256)
    }

    /// Checks a cleartext password (Basic) in the user's own realm, in
    /// constant time with respect to the password contents and length.
    pub fn check_password(&self, user: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(u) => Self::check_user(u, user, password),
            None => {
                // Same work as for a real user, then fail.
                let _ = std::hint::black_box(Sha256::digest(password.as_bytes()));
                false
            }
        }
    }

    /// [`check_password`](Self::check_password), also requiring the user to
    /// belong to `realm`.
    pub fn check_password_in_realm(&self, user: &str, realm: &str, password: &str) -> bool {
        match self.users.get(user) {
            Some(u) if u.realm == realm => Self::check_user(u, user, password),
            _ => {
                let _ = std::hint::black_box(Sha256::digest(password.as_bytes()));
                false
            }
        }
    }

    fn check_user(u: &User, name: &str, password: &str) -> bool {
        match &u.password_hash {
            Some(stored) => {
                let given: [u8; 32] = Sha256::digest(password.as_bytes()).into();
                super::ct_eq(&given, stored)
            }
            None => super::ct_eq(&md5_ha1(name, &u.realm, password), &u.ha1_md5),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
[[user]]
name = "alice"
password = "secret"

[[user]]
name = "Mufasa"
ha1 = "939e7578ed9e3c518a452acee763bce9"
realm = "testrealm@host.com"
"#;

    #[test]
    fn loads_password_and_ha1_users() {
        let s = CredentialStore::from_toml(FILE, "example.com").unwrap();
        assert_eq!(s.len(), 2);
        assert!(!s.supports_sha256());
        assert_eq!(s.realm_of("alice"), Some("example.com"));
        assert_eq!(
            s.ha1_md5("alice", "example.com"),
            Some(md5_ha1("alice", "example.com", "secret"))
        );
        assert!(s.ha1_md5("alice", "other").is_none());
        assert!(s.ha1_sha256("alice", "example.com").is_some());
        // HA1 of Mufasa:testrealm@host.com:Circle Of Life (RFC 2617 §3.5).
        assert_eq!(
            s.ha1_md5("Mufasa", "testrealm@host.com"),
            Some(md5_ha1("Mufasa", "testrealm@host.com", "Circle Of Life"))
        );
        assert!(s.ha1_sha256("Mufasa", "testrealm@host.com").is_none());
        assert!(s.ha1_md5("nobody", "example.com").is_none());
    }

    #[test]
    fn check_password_constant_time_paths() {
        let s = CredentialStore::from_toml(FILE, "example.com").unwrap();
        assert!(s.check_password("alice", "secret"));
        assert!(!s.check_password("alice", "secret2"));
        assert!(!s.check_password("alice", ""));
        assert!(s.check_password("Mufasa", "Circle Of Life"));
        assert!(!s.check_password("Mufasa", "Circle of Life"));
        assert!(!s.check_password("bob", "secret"));
        assert!(s.check_password_in_realm("alice", "example.com", "secret"));
        assert!(!s.check_password_in_realm("alice", "elsewhere", "secret"));
    }

    #[test]
    fn errors_name_the_entry() {
        let cases = [
            (
                "[[user]]\nname = \"a\"\n",
                "#1 (\"a\"): needs `password` or `ha1`",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"x\"\n[[user]]\nname = \"a\"\npassword = \"y\"\n",
                "#2 (\"a\"): duplicate user name",
            ),
            (
                "[[user]]\nname = \"a\"\npassword = \"x\"\nha1 = \"00\"\n",
                "both `password` and `ha1`",
            ),
            (
                "[[user]]\nname = \"a\"\nha1 = \"zz\"\n",
                "`ha1` must be 32 hex digits",
            ),
            (
                "[[user]]\npassword = \"x\"\n",
                "#1 (<no name>): missing `name`",
            ),
            (
                "[[user]]\nname = \"a:b\"\npassword = \"x\"\n",
                "must not contain ':'",
            ),
            (
                "[[user]]\nname = \"\"\npassword = \"x\"\n",
                "`name` is empty",
            ),
            ("[[user]]\nname = \"a\"\npasword = \"x\"\n", "invalid TOML"),
            ("[[user]\n", "invalid TOML"),
        ];
        for (text, want) in cases {
            let e = CredentialStore::from_toml(text, "r")
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn load_names_the_file() {
        let dir = std::env::temp_dir().join(format!("rtedge-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("users.toml");
        std::fs::write(&good, FILE).unwrap();
        let s = CredentialStore::load(&good, "example.com").unwrap();
        assert!(s.check_password("alice", "secret"));
        let bad = dir.join("bad.toml");
        std::fs::write(&bad, "[[user]]\nname = 1\n").unwrap();
        let e = CredentialStore::load(&bad, "r").unwrap_err().to_string();
        assert!(e.contains("bad.toml"), "{e}");
        let e = CredentialStore::load(dir.join("missing.toml"), "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read users file"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn module_doc_example_is_valid() {
        let text = r#"
[[user]]
name = "alice"
password = "secret"

[[user]]
name = "bob"
ha1 = "37593d991414f52c30246c60c7798431"
realm = "example.com"
"#;
        let s = CredentialStore::from_toml(text, "rtedge").unwrap();
        assert!(s.check_password("alice", "secret"));
        assert!(s.check_password("bob", "builder"));
        assert_eq!(s.realm_of("bob"), Some("example.com"));
        assert!(s.ha1_md5("bob", "rtedge").is_none());
    }

    #[test]
    fn empty_file_and_debug_hides_secrets() {
        let s = CredentialStore::from_toml("", "r").unwrap();
        assert!(s.is_empty());
        assert!(s.supports_sha256());
        let s = CredentialStore::from_toml(FILE, "example.com").unwrap();
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }
}
