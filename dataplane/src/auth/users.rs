//! The users file as the running process sees it: loaded at start and
//! replaced whole on reload (SIGHUP, or the management API), without a
//! restart and without touching a connection.
//!
//! Readers (an MSRP AUTH, a WebSocket handshake) take the current
//! [`CredentialStore`] with no lock (`arc-swap`), so a reload never makes a
//! reactor wait. A file that does not load leaves the current users in
//! place: a typo in the file never locks everyone out.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;

use super::store::{AuthError, CredentialStore};

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("no users file is configured ([auth] users_file)")]
    NoFile,
    #[error(transparent)]
    Load(#[from] AuthError),
}

/// The current credentials and where they come from.
#[derive(Debug)]
pub struct Users {
    file: Option<PathBuf>,
    default_realm: String,
    current: ArcSwap<CredentialStore>,
    /// One reload at a time (the file is read outside any reader's way).
    reloading: Mutex<()>,
}

impl Users {
    /// Users loaded from `file` (which [`Users::reload`] reads again).
    pub fn load(file: &Path, default_realm: &str) -> Result<Users, AuthError> {
        let store = CredentialStore::load(file, default_realm)?;
        Ok(Users {
            file: Some(file.to_path_buf()),
            default_realm: default_realm.to_string(),
            current: ArcSwap::from_pointee(store),
            reloading: Mutex::new(()),
        })
    }

    /// Fixed users, with no file to reload from.
    pub fn fixed(store: CredentialStore) -> Users {
        Users {
            file: None,
            default_realm: store.default_realm().to_string(),
            current: ArcSwap::from_pointee(store),
            reloading: Mutex::new(()),
        }
    }

    /// The credentials in force now. A caller keeps using the store it took
    /// (an AUTH or a handshake is checked against one version, whole).
    pub fn current(&self) -> Arc<CredentialStore> {
        self.current.load_full()
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Read the users file again and put it in force; returns how many
    /// users it has. On error the users in force stay.
    pub fn reload(&self) -> Result<usize, ReloadError> {
        let _one = self
            .reloading
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let file = self.file.as_deref().ok_or(ReloadError::NoFile)?;
        let store = CredentialStore::load(file, &self.default_realm)?;
        let n = store.len();
        self.current.store(Arc::new(store));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_replaces_the_users_and_a_bad_file_keeps_them() {
        let dir = std::env::temp_dir().join(format!("rtedge-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("users.toml");
        std::fs::write(&path, "[[user]]\nname = \"alice\"\npassword = \"one\"\n").unwrap();
        let users = Users::load(&path, "r").unwrap();
        let before = users.current();
        assert!(before.check_password("alice", "one"));

        std::fs::write(
            &path,
            "[[user]]\nname = \"alice\"\npassword = \"two\"\n[[user]]\nname = \"bob\"\npassword = \"b\"\n",
        )
        .unwrap();
        assert_eq!(users.reload().unwrap(), 2);
        let now = users.current();
        assert!(now.check_password("alice", "two") && !now.check_password("alice", "one"));
        assert!(now.check_password("bob", "b"));
        // A store taken before stays whole.
        assert!(before.check_password("alice", "one"));

        std::fs::write(&path, "[[user]]\nname = \"carol\"\n").unwrap();
        let e = users.reload().unwrap_err();
        assert!(e.to_string().contains("users.toml"), "{e}");
        assert!(users.current().check_password("alice", "two"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            users.reload(),
            Err(ReloadError::Load(AuthError::Read { .. }))
        ));
        assert!(users.current().check_password("bob", "b"));

        let fixed = Users::fixed(CredentialStore::empty("r"));
        assert!(matches!(fixed.reload(), Err(ReloadError::NoFile)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
