//! Label enums of the counter families. Each is a small `#[repr(u8)]` enum
//! whose discriminant is its series offset inside a family.

/// A label set of a counter family: its label names and, for each series
/// (in discriminant order), the label values (one per name).
pub trait Label: Copy {
    /// Label names (`["transport"]`, or `["result", "reason"]`).
    const NAMES: &'static [&'static str];
    /// Per series, the label values aligned with [`Label::NAMES`].
    const SERIES: &'static [&'static [&'static str]];
    /// Series offset inside the family.
    fn index(self) -> usize;
}

macro_rules! label_enum {
    (@enum $(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $variant:ident = $value:literal ),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $name { $( $(#[$vm])* $variant ),+ }

        impl $name {
            /// Every value, in discriminant order.
            pub const ALL: &'static [$name] = &[ $( $name::$variant ),+ ];
            /// Label values, in discriminant order.
            pub const VALUES: &'static [&'static str] = &[ $( $value ),+ ];
            /// The label value.
            pub const fn as_str(self) -> &'static str {
                Self::VALUES[self as usize]
            }
            /// The value with this discriminant.
            pub const fn from_u8(v: u8) -> Option<Self> {
                if (v as usize) < Self::ALL.len() { Some(Self::ALL[v as usize]) } else { None }
            }
            /// The value whose label is `s`.
            pub fn from_label(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
    ($(#[$m:meta])* $name:ident, $label:literal { $( $(#[$vm:meta])* $variant:ident = $value:literal ),+ $(,)? }) => {
        label_enum!(@enum $(#[$m])* $name { $( $(#[$vm])* $variant = $value ),+ });
        impl Label for $name {
            const NAMES: &'static [&'static str] = &[$label];
            const SERIES: &'static [&'static [&'static str]] = &[ $( &[$value] ),+ ];
            #[inline]
            fn index(self) -> usize { self as usize }
        }
    };
}

label_enum!(
    /// Listener transport (label `transport`).
    Transport, "transport" {
        Ws = "ws",
        Wss = "wss",
        Msrp = "msrp",
        Msrps = "msrps",
        SipUdp = "sip_udp",
        SipTcp = "sip_tcp",
    }
);

label_enum!(
    /// WebSocket sub-protocol of a session (label `subprotocol`).
    SubProtocol, "subprotocol" {
        None = "none",
        Sip = "sip",
        Msrp = "msrp",
        Xmpp = "xmpp",
        Echo = "echo",
    }
);

label_enum!(
    /// Why a connection was refused at accept time (label `reason`).
    RejectReason, "reason" {
        /// Connection limit reached.
        Limit = "limit",
        /// `accept` itself failed.
        AcceptError = "accept_error",
    }
);

label_enum!(@enum
    /// Outcome of a WebSocket opening handshake. Series of
    /// `handshakes_total{result, reason}`: `Accepted` is
    /// `{result="accepted", reason="none"}`, every other variant is
    /// `{result="rejected", reason=<label>}`.
    HandshakeReason {
        Accepted = "none",
        Malformed = "malformed",
        Method = "method",
        HttpVersion = "http_version",
        Host = "host",
        Upgrade = "upgrade",
        Connection = "connection",
        Key = "key",
        Version = "version",
        Path = "path",
        HostNotAllowed = "host_not_allowed",
        Origin = "origin",
        AuthRequired = "auth_required",
        AuthFailed = "auth_failed",
        SubProtocol = "sub_protocol",
        TooLarge = "too_large",
        Disabled = "disabled",
        Timeout = "timeout",
    }
);

impl HandshakeReason {
    /// `"accepted"` or `"rejected"`.
    pub const fn result(self) -> &'static str {
        match self {
            HandshakeReason::Accepted => "accepted",
            _ => "rejected",
        }
    }
}

impl Label for HandshakeReason {
    const NAMES: &'static [&'static str] = &["result", "reason"];
    const SERIES: &'static [&'static [&'static str]] = &[
        &["accepted", "none"],
        &["rejected", "malformed"],
        &["rejected", "method"],
        &["rejected", "http_version"],
        &["rejected", "host"],
        &["rejected", "upgrade"],
        &["rejected", "connection"],
        &["rejected", "key"],
        &["rejected", "version"],
        &["rejected", "path"],
        &["rejected", "host_not_allowed"],
        &["rejected", "origin"],
        &["rejected", "auth_required"],
        &["rejected", "auth_failed"],
        &["rejected", "sub_protocol"],
        &["rejected", "too_large"],
        &["rejected", "disabled"],
        &["rejected", "timeout"],
    ];
    #[inline]
    fn index(self) -> usize {
        self as usize
    }
}

label_enum!(
    /// WebSocket frame opcode (label `opcode`).
    Opcode, "opcode" {
        Text = "text",
        Binary = "binary",
        Continuation = "continuation",
        Close = "close",
        Ping = "ping",
        Pong = "pong",
    }
);

impl Opcode {
    /// From the 4-bit wire opcode (RFC 6455 §5.2); `None` for reserved ones.
    pub const fn from_wire(op: u8) -> Option<Opcode> {
        match op {
            0x0 => Some(Opcode::Continuation),
            0x1 => Some(Opcode::Text),
            0x2 => Some(Opcode::Binary),
            0x8 => Some(Opcode::Close),
            0x9 => Some(Opcode::Ping),
            0xA => Some(Opcode::Pong),
            _ => None,
        }
    }
}

label_enum!(
    /// WebSocket close-code bucket (label `code`).
    CloseCode, "code" {
        Normal = "1000",
        GoingAway = "1001",
        ProtocolError = "1002",
        UnsupportedData = "1003",
        /// 1005: the close frame carried no status code.
        NoStatus = "1005",
        InvalidPayload = "1007",
        PolicyViolation = "1008",
        MessageTooBig = "1009",
        MandatoryExtension = "1010",
        InternalError = "1011",
        Other = "other",
    }
);

impl CloseCode {
    /// Bucket of a numeric close code (anything unlisted is `Other`).
    pub const fn from_u16(code: u16) -> CloseCode {
        match code {
            1000 => CloseCode::Normal,
            1001 => CloseCode::GoingAway,
            1002 => CloseCode::ProtocolError,
            1003 => CloseCode::UnsupportedData,
            1005 => CloseCode::NoStatus,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::PolicyViolation,
            1009 => CloseCode::MessageTooBig,
            1010 => CloseCode::MandatoryExtension,
            1011 => CloseCode::InternalError,
            _ => CloseCode::Other,
        }
    }
}

label_enum!(
    /// Result of a TLS handshake (label `result`).
    TlsResult, "result" {
        Ok = "ok",
        Failed = "failed",
    }
);

label_enum!(
    /// Result of a users-file reload (label `result`).
    ReloadResult, "result" {
        Ok = "ok",
        Failed = "failed",
    }
);

label_enum!(@enum
    /// State of a connection slot.
    ConnState {
        /// Unused slot; skipped by readers.
        Free = "free",
        Handshake = "handshake",
        Open = "open",
        Closing = "closing",
        Closed = "closed",
    }
);

label_enum!(@enum
    /// A protocol that can be enabled or disabled through the control words.
    Protocol {
        Ws = "ws",
        Msrp = "msrp",
        Sip = "sip",
        Xmpp = "xmpp",
    }
);

label_enum!(
    /// MSRP request method (label `method`).
    MsrpMethod, "method" {
        Send = "SEND",
        Report = "REPORT",
        Auth = "AUTH",
        Other = "other",
    }
);

impl MsrpMethod {
    /// From the method token of a request line (anything unlisted is `Other`).
    pub fn from_token(t: &[u8]) -> MsrpMethod {
        match t {
            b"SEND" => MsrpMethod::Send,
            b"REPORT" => MsrpMethod::Report,
            b"AUTH" => MsrpMethod::Auth,
            _ => MsrpMethod::Other,
        }
    }
}

label_enum!(
    /// MSRP response status bucket (label `code`; RFC 4975 §10, RFC 4976).
    MsrpStatus, "code" {
        Ok = "200",
        BadRequest = "400",
        Unauthorized = "401",
        Forbidden = "403",
        Timeout = "408",
        StopSending = "413",
        UnsupportedMedia = "415",
        IntervalOutOfBounds = "423",
        NoSession = "481",
        NotImplemented = "501",
        WrongConnection = "506",
        Other = "other",
    }
);

impl MsrpStatus {
    /// Bucket of a numeric status code (anything unlisted is `Other`).
    pub const fn from_u16(code: u16) -> MsrpStatus {
        match code {
            200 => MsrpStatus::Ok,
            400 => MsrpStatus::BadRequest,
            401 => MsrpStatus::Unauthorized,
            403 => MsrpStatus::Forbidden,
            408 => MsrpStatus::Timeout,
            413 => MsrpStatus::StopSending,
            415 => MsrpStatus::UnsupportedMedia,
            423 => MsrpStatus::IntervalOutOfBounds,
            481 => MsrpStatus::NoSession,
            501 => MsrpStatus::NotImplemented,
            506 => MsrpStatus::WrongConnection,
            _ => MsrpStatus::Other,
        }
    }
}

label_enum!(
    /// Outcome of an authentication attempt (label `result`).
    AuthResult, "result" {
        /// Credentials accepted.
        Ok = "ok",
        /// No credentials: a challenge was sent.
        Challenged = "challenged",
        /// Wrong credentials, unknown user, stale or bad nonce.
        Failed = "failed",
    }
);
