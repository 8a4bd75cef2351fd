//! Sealing gossip packets: every datagram a node sends is encrypted and authenticated with a
//! key derived from the cluster secret, so that a machine without the secret can neither read
//! the membership nor take part in it.
//!
//! The scheme, chosen so that a (key, nonce) pair can never repeat:
//!
//! - A cluster key is HKDF-SHA256 over the secret, bound to the cluster's name.
//! - Each sender starts a *session*: 16 random bytes that it picks when it starts. The packet
//!   key is HKDF over the cluster key and the session, so every session seals with a key of
//!   its own, and the nonce is the session's packet counter, which only counts up. Two
//!   senders, or one sender after a restart, never share a packet key unless 128 random bits
//!   collide.
//! - The header (magic, version, key id, session, counter) is the associated data: nothing in
//!   a packet can be changed without the tag failing.
//!
//! A [`Keyring`] holds several cluster keys, as memberlist's does, so that a secret can be
//! rotated without a partition: install the new key everywhere, make it the one that seals,
//! then remove the old one. Packets name their key by a short id; the opener tries only that
//! key.
//!
//! Opening also drops replays: each session keeps a window over its last 64 counters.
//! Nothing here reads a clock or draws random numbers; the shell passes the session in.

use std::collections::HashMap;
use std::fmt;

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::digest;
use ring::hkdf;

const MAGIC: u8 = b'K';
const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const SESSION_LEN: usize = 16;
const HEADER_LEN: usize = 2 + KEY_ID_LEN + SESSION_LEN + 8;
/// What sealing adds to a packet: the header and the AEAD tag.
pub const OVERHEAD: usize = HEADER_LEN + 16;
/// Sessions remembered by an opener; one per live sender, so a bound this large is only
/// reached when senders restart very often. Reaching it forgets every session (they are
/// derived again on their next packet; only their replay windows are lost).
const MAX_SESSIONS: usize = 8192;

/// A cluster key: 32 bytes derived from a cluster's name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey {
    bytes: [u8; 32],
}

/// The short name a packet gives its key: the first bytes of a hash of the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(formatter, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key itself: debug output reaches logs.
        write!(formatter, "ClusterKey({})", self.id())
    }
}

/// HKDF output length for `expand`: ring asks for a type that knows its length.
struct Length(usize);

impl hkdf::KeyType for Length {
    fn len(&self) -> usize {
        self.0
    }
}

impl ClusterKey {
    /// The key of cluster `name` with `secret`. The name is bound in, so that two clusters
    /// that happen to share a secret still cannot read each other.
    pub fn from_secret(name: &str, secret: &str) -> ClusterKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"keelson gossip cluster key v1");
        let mut bytes = [0u8; 32];
        salt.extract(secret.as_bytes())
            .expand(&[name.as_bytes()], Length(32))
            .and_then(|okm| okm.fill(&mut bytes))
            .expect("32 bytes is within HKDF-SHA256's output limit");
        ClusterKey { bytes }
    }

    /// The id packets sealed with this key carry.
    pub fn id(&self) -> KeyId {
        let mut context = digest::Context::new(&digest::SHA256);
        context.update(b"keelson gossip key id");
        context.update(&self.bytes);
        let hash = context.finish();
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&hash.as_ref()[..KEY_ID_LEN]);
        KeyId(id)
    }

    /// The packet key of one sender's session.
    fn session_key(&self, session: &[u8; SESSION_LEN]) -> LessSafeKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, session);
        let prk = salt.extract(&self.bytes);
        let okm = prk
            .expand(&[b"keelson gossip packet key"], &CHACHA20_POLY1305)
            .expect("a ChaCha20 key is within HKDF-SHA256's output limit");
        LessSafeKey::new(UnboundKey::from(okm))
    }
}

/// Why a keyring change was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyringError {
    /// The key is not in the ring.
    NotInstalled(KeyId),
    /// The key seals this node's packets; make another key primary first.
    RemovingPrimary(KeyId),
}

impl fmt::Display for KeyringError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyringError::NotInstalled(id) => {
                write!(formatter, "gossip key {id} is not installed on this node")
            }
            KeyringError::RemovingPrimary(id) => write!(
                formatter,
                "gossip key {id} seals this node's packets; make another key primary before \
                 removing it"
            ),
        }
    }
}

impl std::error::Error for KeyringError {}

/// The keys a node opens packets with; the first (primary) one also seals them.
#[derive(Debug, Clone)]
pub struct Keyring {
    keys: Vec<ClusterKey>,
}

impl Keyring {
    /// A ring of one key, which seals.
    pub fn new(primary: ClusterKey) -> Keyring {
        Keyring {
            keys: vec![primary],
        }
    }

    /// The ring a config names: `secret` seals, `accepted` (older or newer secrets, while
    /// the cluster rotates) also open.
    pub fn of_secrets(cluster: &str, secret: &str, accepted: &[String]) -> Keyring {
        let mut ring = Keyring::new(ClusterKey::from_secret(cluster, secret));
        for other in accepted {
            ring.install(ClusterKey::from_secret(cluster, other));
        }
        ring
    }

    /// The key that seals.
    pub fn primary(&self) -> &ClusterKey {
        &self.keys[0]
    }

    /// The ids of every key, the primary's first.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.iter().map(ClusterKey::id).collect()
    }

    /// Adds a key that packets may be opened with. Installing a key twice changes nothing.
    pub fn install(&mut self, key: ClusterKey) {
        if !self.keys.contains(&key) {
            self.keys.push(key);
        }
    }

    /// Makes an installed key the one that seals.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        let index = self.position(id).ok_or(KeyringError::NotInstalled(id))?;
        let key = self.keys.remove(index);
        self.keys.insert(0, key);
        Ok(())
    }

    /// Removes a key that no longer seals.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyringError> {
        match self.position(id) {
            None => Err(KeyringError::NotInstalled(id)),
            Some(0) => Err(KeyringError::RemovingPrimary(id)),
            Some(index) => {
                self.keys.remove(index);
                Ok(())
            }
        }
    }

    fn position(&self, id: KeyId) -> Option<usize> {
        self.keys.iter().position(|key| key.id() == id)
    }

    fn get(&self, id: KeyId) -> Option<&ClusterKey> {
        self.keys.iter().find(|key| key.id() == id)
    }
}

/// Why a packet was dropped. Each is counted apart, so that a node can say whether it hears
/// strangers (an unknown key: another cluster, or a wrong secret), forgeries or replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Too short, or not a Keelson gossip packet of this version.
    Malformed,
    /// Sealed with a key this node does not hold.
    UnknownKey(KeyId),
    /// The tag did not verify: the packet was changed, or sealed by someone else.
    Forged,
    /// A packet this node has already opened, or one too old to tell.
    Replayed,
}

impl fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Malformed => formatter.write_str("not a Keelson gossip packet"),
            Refusal::UnknownKey(id) => write!(
                formatter,
                "sealed with gossip key {id}, which this node does not hold (another \
                 cluster, or a node with a different cluster secret)"
            ),
            Refusal::Forged => formatter.write_str("its seal does not verify"),
            Refusal::Replayed => formatter.write_str("a replay of an earlier packet"),
        }
    }
}

/// Seals and opens the packets of one node.
pub struct Seal {
    keyring: Keyring,
    session: [u8; SESSION_LEN],
    sealing_key: (KeyId, LessSafeKey),
    next_counter: u64,
    peers: HashMap<(KeyId, [u8; SESSION_LEN]), PeerSession>,
}

struct PeerSession {
    key: LessSafeKey,
    replay: ReplayWindow,
}

impl Seal {
    /// A sealer for a session that the caller drew at random when the node started.
    pub fn new(keyring: Keyring, session: [u8; SESSION_LEN]) -> Seal {
        let sealing_key = (
            keyring.primary().id(),
            keyring.primary().session_key(&session),
        );
        Seal {
            keyring,
            session,
            sealing_key,
            next_counter: 0,
            peers: HashMap::new(),
        }
    }

    /// The keys this seal holds.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// Changes the keyring. Sessions opened with a removed key are forgotten.
    pub fn set_keyring(&mut self, keyring: Keyring) {
        if keyring.primary().id() != self.sealing_key.0 {
            self.sealing_key = (
                keyring.primary().id(),
                keyring.primary().session_key(&self.session),
            );
        }
        let ids = keyring.ids();
        self.peers.retain(|(id, _), _| ids.contains(id));
        self.keyring = keyring;
    }

    /// The packet that carries `message`, sealed with the primary key.
    pub fn seal(&mut self, message: &[u8]) -> Vec<u8> {
        let counter = self.next_counter;
        // 2^64 packets are centuries of gossip; wrapping would reuse a nonce, so stop
        // rather than wrap.
        self.next_counter = counter
            .checked_add(1)
            .expect("a gossip session never sends 2^64 packets");
        let mut packet = Vec::with_capacity(message.len() + OVERHEAD);
        packet.extend_from_slice(&[MAGIC, VERSION]);
        packet.extend_from_slice(&self.sealing_key.0 .0);
        packet.extend_from_slice(&self.session);
        packet.extend_from_slice(&counter.to_be_bytes());
        let mut body = message.to_vec();
        self.sealing_key
            .1
            .seal_in_place_append_tag(nonce(counter), Aad::from(&packet[..HEADER_LEN]), &mut body)
            .expect("ChaCha20-Poly1305 seals messages of any gossip size");
        packet.extend_from_slice(&body);
        packet
    }

    /// The message a packet carries, or why it was dropped.
    pub fn open(&mut self, packet: &[u8]) -> Result<Vec<u8>, Refusal> {
        if packet.len() < OVERHEAD || packet[0] != MAGIC || packet[1] != VERSION {
            return Err(Refusal::Malformed);
        }
        let (header, body) = packet.split_at(HEADER_LEN);
        let key_id = KeyId(
            header[2..2 + KEY_ID_LEN]
                .try_into()
                .expect("sliced to length"),
        );
        let session: [u8; SESSION_LEN] = header[2 + KEY_ID_LEN..2 + KEY_ID_LEN + SESSION_LEN]
            .try_into()
            .expect("sliced to length");
        let counter = u64::from_be_bytes(
            header[HEADER_LEN - 8..]
                .try_into()
                .expect("sliced to length"),
        );
        let cluster_key = self
            .keyring
            .get(key_id)
            .ok_or(Refusal::UnknownKey(key_id))?;
        let mut message = body.to_vec();
        let peer = (key_id, session);
        match self.peers.get_mut(&peer) {
            Some(known) => {
                if !known.replay.is_fresh(counter) {
                    return Err(Refusal::Replayed);
                }
                open_with(&known.key, counter, header, &mut message)?;
                known.replay.accept(counter);
            }
            None => {
                let key = cluster_key.session_key(&session);
                open_with(&key, counter, header, &mut message)?;
                // Only a packet that opened makes a session, so strangers cannot fill the
                // table.
                if self.peers.len() >= MAX_SESSIONS {
                    self.peers.clear();
                }
                let mut replay = ReplayWindow::default();
                replay.accept(counter);
                self.peers.insert(peer, PeerSession { key, replay });
            }
        }
        Ok(message)
    }
}

/// Opens `message` in place (leaving the plaintext) with one session's key.
fn open_with(
    key: &LessSafeKey,
    counter: u64,
    header: &[u8],
    message: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let opened_len = key
        .open_in_place(nonce(counter), Aad::from(header), message)
        .map_err(|_| Refusal::Forged)?
        .len();
    message.truncate(opened_len);
    Ok(())
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; aead::NONCE_LEN];
    bytes[aead::NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// The counters of one session seen lately: the highest one, and which of the 63 below it
/// have arrived. UDP reorders, so an older counter is still welcome once.
#[derive(Debug, Default, Clone, Copy)]
struct ReplayWindow {
    /// One more than the highest counter seen; 0 while none was.
    top: u64,
    /// Bit i set: counter `top - 1 - i` was seen.
    seen: u64,
}

impl ReplayWindow {
    fn is_fresh(&self, counter: u64) -> bool {
        if counter >= self.top {
            return true;
        }
        let behind = self.top - 1 - counter;
        behind < 64 && self.seen & (1 << behind) == 0
    }

    fn accept(&mut self, counter: u64) {
        if counter >= self.top {
            let shift = counter + 1 - self.top;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.top = counter + 1;
        } else {
            self.seen |= 1 << (self.top - 1 - counter);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a cluster secret of at least 32 characters";

    fn seal(session: u8) -> Seal {
        Seal::new(
            Keyring::new(ClusterKey::from_secret("lab", SECRET)),
            [session; SESSION_LEN],
        )
    }

    #[test]
    fn a_packet_opens_once_on_every_node_with_the_key() {
        let (mut alice, mut bob, mut carol) = (seal(1), seal(2), seal(3));
        let packet = alice.seal(b"ping");
        assert_eq!(packet.len(), 4 + OVERHEAD);
        assert_eq!(bob.open(&packet).unwrap(), b"ping");
        assert_eq!(carol.open(&packet).unwrap(), b"ping");
        assert_eq!(bob.open(&packet), Err(Refusal::Replayed));
    }

    #[test]
    fn the_same_message_never_seals_to_the_same_bytes() {
        let mut alice = seal(1);
        let first = alice.seal(b"ping");
        let second = alice.seal(b"ping");
        assert_ne!(first[HEADER_LEN..], second[HEADER_LEN..]);
        // A restarted node draws a new session: its first packet differs from the last
        // run's first packet though both have counter 0.
        let mut restarted = seal(9);
        assert_ne!(first[HEADER_LEN..], restarted.seal(b"ping")[HEADER_LEN..]);
    }

    #[test]
    fn a_wrong_secret_or_another_cluster_cannot_open_and_is_named() {
        let mut alice = seal(1);
        let packet = alice.seal(b"ping");
        let other_secret = ClusterKey::from_secret("lab", "another secret, also long enough!!");
        let other_cluster = ClusterKey::from_secret("prod", SECRET);
        for key in [other_secret, other_cluster] {
            let mut stranger = Seal::new(Keyring::new(key), [7; SESSION_LEN]);
            let expected = alice.keyring().primary().id();
            assert_eq!(stranger.open(&packet), Err(Refusal::UnknownKey(expected)));
        }
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let mut alice = seal(1);
        let packet = alice.seal(b"the membership");
        for index in 0..packet.len() {
            let mut bob = seal(2);
            let mut changed = packet.clone();
            changed[index] ^= 0x20;
            let refusal = bob.open(&changed).unwrap_err();
            let expected = match index {
                0 | 1 => Refusal::Malformed,
                2..=5 => Refusal::UnknownKey(KeyId(changed[2..6].try_into().unwrap())),
                _ => Refusal::Forged,
            };
            assert_eq!(refusal, expected, "byte {index} changed");
        }
        assert_eq!(
            seal(2).open(&packet[..OVERHEAD - 1]),
            Err(Refusal::Malformed)
        );
    }

    #[test]
    fn reordered_packets_open_but_each_only_once() {
        let mut alice = seal(1);
        let packets: Vec<Vec<u8>> = (0..100).map(|n| alice.seal(&[n])).collect();
        let mut bob = seal(2);
        assert!(bob.open(&packets[99]).is_ok());
        assert!(
            bob.open(&packets[40]).is_ok(),
            "59 behind the newest is in the window"
        );
        assert_eq!(bob.open(&packets[40]), Err(Refusal::Replayed));
        assert_eq!(
            bob.open(&packets[10]),
            Err(Refusal::Replayed),
            "89 behind is too old to tell"
        );
        assert!(bob.open(&packets[98]).is_ok());
    }

    #[test]
    fn a_secret_rotates_without_a_node_losing_its_peers() {
        let old = ClusterKey::from_secret("lab", SECRET);
        let new = ClusterKey::from_secret("lab", "the next secret, at least 32 chars long");
        let mut alice = seal(1);
        let mut bob = seal(2);
        // Install the new key everywhere: both still seal with the old one.
        let mut ring = alice.keyring().clone();
        ring.install(new.clone());
        ring.install(new.clone());
        assert_eq!(ring.ids().len(), 2, "installing twice adds one key");
        bob.set_keyring(ring.clone());
        // Alice seals with the new key before Bob does: Bob opens it all the same.
        ring.use_key(new.id()).unwrap();
        alice.set_keyring(ring.clone());
        assert_eq!(bob.open(&alice.seal(b"new")).unwrap(), b"new");
        // The old key cannot be removed while it seals, and then it can.
        let mut bobs = bob.keyring().clone();
        assert_eq!(
            bobs.remove(old.id()),
            Err(KeyringError::RemovingPrimary(old.id()))
        );
        bobs.use_key(new.id()).unwrap();
        bobs.remove(old.id()).unwrap();
        bob.set_keyring(bobs);
        // A packet still sealed with the old key is now a stranger's.
        let mut laggard = seal(3);
        assert_eq!(
            bob.open(&laggard.seal(b"old")),
            Err(Refusal::UnknownKey(old.id()))
        );
        assert_eq!(
            ring.use_key(KeyId([0; 4])),
            Err(KeyringError::NotInstalled(KeyId([0; 4])))
        );
    }
}
