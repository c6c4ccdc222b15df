//! Engine.IO v4 and Socket.IO v5-protocol text packet encoding/decoding.
//!
//! Decoding never panics: everything that comes off the network is checked and
//! malformed input becomes a [`PacketError`], so the client can log and skip it.

use serde::Deserialize;
use serde_json::Value;

/// Why a packet could not be decoded.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum PacketError {
    /// The packet was an empty string.
    #[error("empty packet")]
    Empty,
    /// The leading type character is not a known packet type.
    #[error("unknown packet type {0:?}")]
    UnknownType(char),
    /// Binary packets/attachments are out of scope for this client.
    #[error("binary packets are not supported")]
    Binary,
    /// The JSON part did not parse.
    #[error("invalid json: {0}")]
    Json(String),
    /// The packet parsed but its shape is not valid for its type.
    #[error("invalid packet: {0}")]
    Invalid(&'static str),
}

/// One Engine.IO packet (text only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnginePacket {
    /// `0{json}`: handshake data.
    Open(String),
    /// `1`: transport-level close.
    Close,
    /// `2[data]`: ping (sent by the server in v4; `2probe` by the client while upgrading).
    Ping(String),
    /// `3[data]`: pong.
    Pong(String),
    /// `4<payload>`: a message carrying a Socket.IO packet.
    Message(String),
    /// `5`: upgrade.
    Upgrade,
    /// `6`: noop (used by the server to release a pending poll during an upgrade).
    Noop,
}

impl EnginePacket {
    /// Decodes one text Engine.IO packet.
    pub fn decode(s: &str) -> Result<Self, PacketError> {
        let mut chars = s.chars();
        let Some(first) = chars.next() else {
            return Err(PacketError::Empty);
        };
        let rest = chars.as_str();
        Ok(match first {
            '0' => Self::Open(rest.to_owned()),
            '1' => Self::Close,
            '2' => Self::Ping(rest.to_owned()),
            '3' => Self::Pong(rest.to_owned()),
            '4' => Self::Message(rest.to_owned()),
            '5' => Self::Upgrade,
            '6' => Self::Noop,
            // Polling transports base64-encode binary as `b<base64>`.
            'b' => return Err(PacketError::Binary),
            other => return Err(PacketError::UnknownType(other)),
        })
    }

    /// Encodes this packet to its text form.
    pub fn encode(&self) -> String {
        match self {
            Self::Open(d) => format!("0{d}"),
            Self::Close => "1".to_owned(),
            Self::Ping(d) => format!("2{d}"),
            Self::Pong(d) => format!("3{d}"),
            Self::Message(d) => format!("4{d}"),
            Self::Upgrade => "5".to_owned(),
            Self::Noop => "6".to_owned(),
        }
    }
}

/// The Engine.IO record separator between packets of a polling payload.
pub const RECORD_SEPARATOR: char = '\u{1e}';

/// Splits a polling payload into its packets (empty records are dropped).
pub fn split_payload(body: &str) -> impl Iterator<Item = &str> {
    body.split(RECORD_SEPARATOR).filter(|p| !p.is_empty())
}

/// The JSON body of the Engine.IO OPEN packet.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct OpenInfo {
    /// Engine.IO session id.
    pub sid: String,
    /// Transports the server allows upgrading to.
    #[serde(default)]
    pub upgrades: Vec<String>,
    /// Milliseconds between server pings.
    pub ping_interval: u64,
    /// Milliseconds the server waits for a pong (and we add to the interval to detect a dead server).
    pub ping_timeout: u64,
    /// Maximum payload size in bytes the server accepts.
    #[serde(default)]
    pub max_payload: Option<u64>,
}

impl OpenInfo {
    /// Parses the data part of an OPEN packet.
    pub fn parse(data: &str) -> Result<Self, PacketError> {
        serde_json::from_str(data).map_err(|e| PacketError::Json(e.to_string()))
    }
}

/// Socket.IO packet types (binary ones are rejected on decode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SioKind {
    /// `0`
    Connect,
    /// `1`
    Disconnect,
    /// `2`
    Event,
    /// `3`
    Ack,
    /// `4`
    ConnectError,
}

impl SioKind {
    fn code(self) -> char {
        match self {
            Self::Connect => '0',
            Self::Disconnect => '1',
            Self::Event => '2',
            Self::Ack => '3',
            Self::ConnectError => '4',
        }
    }
}

/// One Socket.IO packet: `<type>[<nsp>,][<ackId>][json]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    /// Packet type.
    pub kind: SioKind,
    /// Namespace; `"/"` is omitted on the wire.
    pub nsp: String,
    /// Ack id for events expecting an ack, and for acks.
    pub id: Option<u64>,
    /// JSON payload.
    pub data: Option<Value>,
}

impl SioPacket {
    /// A CONNECT packet, with optional auth payload.
    pub fn connect(nsp: &str, auth: Option<Value>) -> Self {
        Self {
            kind: SioKind::Connect,
            nsp: nsp.to_owned(),
            id: None,
            data: auth,
        }
    }

    /// A DISCONNECT packet.
    pub fn disconnect(nsp: &str) -> Self {
        Self {
            kind: SioKind::Disconnect,
            nsp: nsp.to_owned(),
            id: None,
            data: None,
        }
    }

    /// An EVENT packet `["name", ...args]`.
    pub fn event(nsp: &str, name: &str, args: Vec<Value>, id: Option<u64>) -> Self {
        let mut arr = Vec::with_capacity(args.len() + 1);
        arr.push(Value::String(name.to_owned()));
        arr.extend(args);
        Self {
            kind: SioKind::Event,
            nsp: nsp.to_owned(),
            id,
            data: Some(Value::Array(arr)),
        }
    }

    /// An ACK packet `[...args]`.
    pub fn ack(nsp: &str, id: u64, args: Vec<Value>) -> Self {
        Self {
            kind: SioKind::Ack,
            nsp: nsp.to_owned(),
            id: Some(id),
            data: Some(Value::Array(args)),
        }
    }

    /// Encodes to the Socket.IO text form (without the Engine.IO `4` prefix).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        out.push(self.kind.code());
        if !self.nsp.is_empty() && self.nsp != "/" {
            out.push_str(&self.nsp);
            out.push(',');
        }
        if let Some(id) = self.id {
            out.push_str(&id.to_string());
        }
        if let Some(data) = &self.data {
            out.push_str(&data.to_string());
        }
        out
    }

    /// Encodes as a complete Engine.IO message packet (`4` + Socket.IO packet).
    pub fn to_engine(&self) -> String {
        format!("4{}", self.encode())
    }

    /// Decodes a Socket.IO text packet (the Engine.IO `4` prefix already stripped).
    pub fn decode(s: &str) -> Result<Self, PacketError> {
        let mut chars = s.chars();
        let Some(first) = chars.next() else {
            return Err(PacketError::Empty);
        };
        let kind = match first {
            '0' => SioKind::Connect,
            '1' => SioKind::Disconnect,
            '2' => SioKind::Event,
            '3' => SioKind::Ack,
            '4' => SioKind::ConnectError,
            '5' | '6' => return Err(PacketError::Binary),
            other => return Err(PacketError::UnknownType(other)),
        };
        let mut rest = chars.as_str();

        // Namespace: present only when it starts with '/', terminated by ',' or the end.
        let nsp = if rest.starts_with('/') {
            match rest.find(',') {
                Some(i) => {
                    let n = &rest[..i];
                    rest = &rest[i + 1..];
                    n.to_owned()
                }
                None => {
                    let n = rest.to_owned();
                    rest = "";
                    n
                }
            }
        } else {
            "/".to_owned()
        };

        // Ack id: a run of ASCII digits.
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let id = if digits > 0 {
            let id = rest[..digits]
                .parse::<u64>()
                .map_err(|_| PacketError::Invalid("ack id out of range"))?;
            rest = &rest[digits..];
            Some(id)
        } else {
            None
        };

        let data = if rest.is_empty() {
            None
        } else {
            Some(
                serde_json::from_str::<Value>(rest)
                    .map_err(|e| PacketError::Json(e.to_string()))?,
            )
        };

        let pkt = Self {
            kind,
            nsp,
            id,
            data,
        };
        pkt.validate()?;
        Ok(pkt)
    }

    /// Checks the payload shape per type, as socket.io-parser does.
    fn validate(&self) -> Result<(), PacketError> {
        match (self.kind, &self.data) {
            (SioKind::Connect, None | Some(Value::Object(_))) => Ok(()),
            (SioKind::Connect, _) => Err(PacketError::Invalid("CONNECT payload must be an object")),
            (SioKind::Disconnect, None) => Ok(()),
            (SioKind::Disconnect, _) => Err(PacketError::Invalid("DISCONNECT carries no payload")),
            (SioKind::Event, Some(Value::Array(a)))
                if matches!(a.first(), Some(Value::String(_))) =>
            {
                Ok(())
            }
            (SioKind::Event, _) => Err(PacketError::Invalid(
                "EVENT payload must be [\"name\", ...]",
            )),
            (SioKind::Ack, Some(Value::Array(_))) if self.id.is_some() => Ok(()),
            (SioKind::Ack, _) => Err(PacketError::Invalid("ACK needs an id and an array payload")),
            // v4 servers send an object; v2-era servers sent a bare string.
            (SioKind::ConnectError, Some(Value::Object(_) | Value::String(_))) => Ok(()),
            (SioKind::ConnectError, _) => Err(PacketError::Invalid(
                "CONNECT_ERROR payload must be an object",
            )),
        }
    }

    /// For an EVENT: the name and the arguments after it.
    pub fn event_parts(&self) -> Option<(String, Vec<Value>)> {
        if self.kind != SioKind::Event {
            return None;
        }
        let Some(Value::Array(arr)) = &self.data else {
            return None;
        };
        let mut it = arr.iter().cloned();
        match it.next() {
            Some(Value::String(name)) => Some((name, it.collect())),
            _ => None,
        }
    }

    /// For an ACK: its arguments.
    pub fn ack_args(&self) -> Vec<Value> {
        match &self.data {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn engine_roundtrip() {
        for p in [
            EnginePacket::Open("{}".into()),
            EnginePacket::Close,
            EnginePacket::Ping(String::new()),
            EnginePacket::Ping("probe".into()),
            EnginePacket::Pong("probe".into()),
            EnginePacket::Message("2[\"a\"]".into()),
            EnginePacket::Upgrade,
            EnginePacket::Noop,
        ] {
            assert_eq!(EnginePacket::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn engine_malformed() {
        assert_eq!(EnginePacket::decode(""), Err(PacketError::Empty));
        assert_eq!(
            EnginePacket::decode("9"),
            Err(PacketError::UnknownType('9'))
        );
        assert_eq!(
            EnginePacket::decode("x42"),
            Err(PacketError::UnknownType('x'))
        );
        assert_eq!(EnginePacket::decode("bAAE="), Err(PacketError::Binary));
        assert_eq!(
            EnginePacket::decode("é"),
            Err(PacketError::UnknownType('é'))
        );
    }

    #[test]
    fn payload_split() {
        let v: Vec<_> = split_payload("2\u{1e}42[\"a\",1]\u{1e}\u{1e}6").collect();
        assert_eq!(v, vec!["2", "42[\"a\",1]", "6"]);
        assert_eq!(split_payload("").count(), 0);
    }

    #[test]
    fn open_info() {
        let o = OpenInfo::parse(
            r#"{"sid":"abc","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#,
        )
        .unwrap();
        assert_eq!(o.sid, "abc");
        assert_eq!(o.upgrades, vec!["websocket"]);
        assert_eq!(o.ping_interval, 25000);
        assert_eq!(o.max_payload, Some(1_000_000));
        assert!(OpenInfo::parse("{}").is_err());
        assert!(OpenInfo::parse("not json").is_err());
        assert!(OpenInfo::parse(r#"{"sid":1,"pingInterval":1,"pingTimeout":1}"#).is_err());
    }

    #[test]
    fn encode_variants() {
        assert_eq!(SioPacket::connect("/", None).to_engine(), "40");
        assert_eq!(
            SioPacket::connect("/", Some(json!({"token":"t"}))).to_engine(),
            r#"40{"token":"t"}"#
        );
        assert_eq!(
            SioPacket::connect("/admin", Some(json!({"a":1}))).encode(),
            r#"0/admin,{"a":1}"#
        );
        assert_eq!(SioPacket::disconnect("/").to_engine(), "41");
        assert_eq!(SioPacket::disconnect("/admin").encode(), "1/admin,");
        assert_eq!(
            SioPacket::event("/", "hi", vec![json!({"x":1})], None).to_engine(),
            r#"42["hi",{"x":1}]"#
        );
        assert_eq!(
            SioPacket::event("/", "hi", vec![], Some(12)).to_engine(),
            r#"4212["hi"]"#
        );
        assert_eq!(
            SioPacket::event("/n", "hi", vec![json!(1), json!(2)], Some(3)).encode(),
            r#"2/n,3["hi",1,2]"#
        );
        assert_eq!(SioPacket::ack("/", 7, vec![]).to_engine(), "437[]");
    }

    #[test]
    fn decode_variants() {
        let p = SioPacket::decode(r#"0{"sid":"s1"}"#).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (SioKind::Connect, "/", None)
        );
        assert_eq!(p.data, Some(json!({"sid":"s1"})));

        let p = SioPacket::decode(r#"2/admin,5["ev",1,"x"]"#).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (SioKind::Event, "/admin", Some(5))
        );
        assert_eq!(
            p.event_parts(),
            Some(("ev".to_owned(), vec![json!(1), json!("x")]))
        );

        let p = SioPacket::decode(r#"312[{"ok":true}]"#).unwrap();
        assert_eq!((p.kind, p.id), (SioKind::Ack, Some(12)));
        assert_eq!(p.ack_args(), vec![json!({"ok":true})]);

        let p = SioPacket::decode(r#"4{"message":"nope","data":{"code":1}}"#).unwrap();
        assert_eq!(p.kind, SioKind::ConnectError);

        let p = SioPacket::decode("1").unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (SioKind::Disconnect, "/"));
        let p = SioPacket::decode("1/admin,").unwrap();
        assert_eq!(p.nsp, "/admin");
        let p = SioPacket::decode("1/admin").unwrap();
        assert_eq!(p.nsp, "/admin");
    }

    #[test]
    fn decode_roundtrip() {
        for p in [
            SioPacket::event("/", "e", vec![json!(null), json!([1, 2])], Some(0)),
            SioPacket::event("/x", "ünï", vec![json!("a\u{1e}b")], None),
            SioPacket::ack("/", 99, vec![json!({"k":"v"})]),
            SioPacket::connect("/", Some(json!({"token":"abc"}))),
        ] {
            assert_eq!(SioPacket::decode(&p.encode()).unwrap(), p);
        }
    }

    #[test]
    fn decode_malformed() {
        let bad = [
            "",
            "9",
            "x",
            "2[not json",
            "2",
            "2[]",
            "2[1,2]",
            "2{\"a\":1}",
            "3[1]",
            "31",
            "3\"x\"",
            "0[1]",
            "1{}",
            "4",
            "4[1]",
            "51-[\"a\",{\"_placeholder\":true,\"num\":0}]",
            "299999999999999999999999[\"a\"]",
            "2/admin,[\"a\"",
            "2[\"a\"] trailing",
        ];
        for b in bad {
            assert!(SioPacket::decode(b).is_err(), "should reject {b:?}");
        }
    }
}
