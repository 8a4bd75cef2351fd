//! nf_tables over netlink: puts a [`NatPlan`] in force as the table `ip keelson`, in one
//! transaction (a batch the kernel applies whole or not at all), replacing what the table
//! held. No `nft` binary: the messages are encoded here, the way `nft` itself sends them
//! (attributes in network byte order, expressions on registers 1 and 2).
//!
//! [`encode`] is pure (the batch's bytes); [`apply`] sends them and reads the kernel's
//! answer to each message.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::nat::{Base, Chain, Expr, NatPlan, TABLE};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 0x2;

// Attribute numbers (linux/netfilter/nf_tables.h).
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_FIB_DREG: u16 = 1;
const NFTA_FIB_RESULT: u16 = 2;
const NFTA_FIB_FLAGS: u16 = 3;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;

/// Netlink attributes, built in place.
#[derive(Default)]
struct Attributes(Vec<u8>);

impl Attributes {
    fn bytes(&mut self, kind: u16, value: &[u8]) -> &mut Self {
        let length = 4 + value.len();
        self.0.extend_from_slice(&(length as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(value);
        self.pad();
        self
    }

    fn string(&mut self, kind: u16, value: &str) -> &mut Self {
        let mut bytes = value.as_bytes().to_vec();
        bytes.push(0);
        self.bytes(kind, &bytes)
    }

    /// nf_tables' numbers travel big-endian.
    fn be32(&mut self, kind: u16, value: u32) -> &mut Self {
        self.bytes(kind, &value.to_be_bytes())
    }

    fn nested(&mut self, kind: u16, inner: Attributes) -> &mut Self {
        self.bytes(kind | NLA_F_NESTED, &inner.0)
    }

    fn pad(&mut self) {
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
    }
}

fn data(value: &[u8]) -> Attributes {
    let mut inner = Attributes::default();
    inner.bytes(NFTA_DATA_VALUE, value);
    inner
}

/// One message of the batch: its type, flags and nf_tables attributes.
struct Message {
    kind: u16,
    flags: u16,
    family: u8,
    attributes: Attributes,
    /// What it does, for an error.
    what: String,
}

fn nft_message(kind: u16, flags: u16, attributes: Attributes, what: String) -> Message {
    Message {
        kind: (NFNL_SUBSYS_NFTABLES << 8) | kind,
        flags: NLM_F_REQUEST | NLM_F_ACK | flags,
        family: NFPROTO_IPV4,
        attributes,
        what,
    }
}

fn expression(expr: &Expr) -> Attributes {
    let mut inner = Attributes::default();
    let name = match expr {
        Expr::Payload { base, offset, len } => {
            inner
                .be32(NFTA_PAYLOAD_DREG, 1)
                .be32(
                    NFTA_PAYLOAD_BASE,
                    match base {
                        Base::Network => 1,
                        Base::Transport => 2,
                    },
                )
                .be32(NFTA_PAYLOAD_OFFSET, *offset)
                .be32(NFTA_PAYLOAD_LEN, *len);
            "payload"
        }
        Expr::Mask(mask) => {
            inner
                .be32(NFTA_BITWISE_SREG, 1)
                .be32(NFTA_BITWISE_DREG, 1)
                .be32(NFTA_BITWISE_LEN, mask.len() as u32)
                .nested(NFTA_BITWISE_MASK, data(mask))
                .nested(NFTA_BITWISE_XOR, data(&vec![0; mask.len()]));
            "bitwise"
        }
        Expr::Compare { equal, data: value } => {
            inner
                .be32(NFTA_CMP_SREG, 1)
                .be32(NFTA_CMP_OP, if *equal { 0 } else { 1 })
                .nested(NFTA_CMP_DATA, data(value));
            "cmp"
        }
        Expr::L4Protocol => {
            inner
                .be32(NFTA_META_DREG, 1)
                .be32(NFTA_META_KEY, NFT_META_L4PROTO);
            "meta"
        }
        Expr::DestinationAddressType => {
            inner
                .be32(NFTA_FIB_DREG, 1)
                .be32(NFTA_FIB_RESULT, NFT_FIB_RESULT_ADDRTYPE)
                .be32(NFTA_FIB_FLAGS, NFTA_FIB_F_DADDR);
            "fib"
        }
        Expr::Immediate {
            register,
            data: value,
        } => {
            inner
                .be32(NFTA_IMMEDIATE_DREG, *register)
                .nested(NFTA_IMMEDIATE_DATA, data(value));
            "immediate"
        }
        Expr::Masquerade => "masq",
        Expr::Dnat => {
            inner
                .be32(NFTA_NAT_TYPE, NFT_NAT_DNAT)
                .be32(NFTA_NAT_FAMILY, u32::from(NFPROTO_IPV4))
                .be32(NFTA_NAT_REG_ADDR_MIN, 1)
                .be32(NFTA_NAT_REG_PROTO_MIN, 2);
            "nat"
        }
    };
    let mut element = Attributes::default();
    element.string(NFTA_EXPR_NAME, name);
    if !inner.0.is_empty() {
        element.nested(NFTA_EXPR_DATA, inner);
    }
    element
}

/// The transaction that makes the table hold exactly `plan`: the table is added (so that
/// deleting it cannot fail), deleted, and made again with its chains and rules.
fn messages(plan: &NatPlan) -> Vec<Message> {
    let table = || {
        let mut attributes = Attributes::default();
        attributes.string(NFTA_TABLE_NAME, TABLE);
        attributes
    };
    let mut messages = vec![
        nft_message(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            table(),
            format!("add table ip {TABLE}"),
        ),
        nft_message(
            NFT_MSG_DELTABLE,
            0,
            table(),
            format!("delete table ip {TABLE}"),
        ),
        nft_message(
            NFT_MSG_NEWTABLE,
            NLM_F_CREATE,
            table(),
            format!("add table ip {TABLE}"),
        ),
    ];
    for chain in Chain::ALL {
        let mut hook = Attributes::default();
        hook.be32(NFTA_HOOK_HOOKNUM, chain.hook())
            .be32(NFTA_HOOK_PRIORITY, chain.priority() as u32);
        let mut attributes = Attributes::default();
        attributes
            .string(NFTA_CHAIN_TABLE, TABLE)
            .string(NFTA_CHAIN_NAME, chain.name())
            .nested(NFTA_CHAIN_HOOK, hook)
            .string(NFTA_CHAIN_TYPE, "nat");
        messages.push(nft_message(
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE,
            attributes,
            format!("add chain ip {TABLE} {}", chain.name()),
        ));
    }
    for (index, (chain, exprs)) in plan.rules().into_iter().enumerate() {
        let mut list = Attributes::default();
        for expr in &exprs {
            list.nested(NFTA_LIST_ELEM, expression(expr));
        }
        let mut attributes = Attributes::default();
        attributes
            .string(NFTA_RULE_TABLE, TABLE)
            .string(NFTA_RULE_CHAIN, chain.name())
            .nested(NFTA_RULE_EXPRESSIONS, list);
        messages.push(nft_message(
            NFT_MSG_NEWRULE,
            NLM_F_CREATE | NLM_F_APPEND,
            attributes,
            format!("rule {index} of chain {}: {exprs:?}", chain.name()),
        ));
    }
    messages
}

fn header(
    buffer: &mut Vec<u8>,
    kind: u16,
    flags: u16,
    sequence: u32,
    family: u8,
    res_id: u16,
    payload: &[u8],
) {
    let length = 16 + 4 + payload.len();
    buffer.extend_from_slice(&(length as u32).to_ne_bytes());
    buffer.extend_from_slice(&kind.to_ne_bytes());
    buffer.extend_from_slice(&flags.to_ne_bytes());
    buffer.extend_from_slice(&sequence.to_ne_bytes());
    buffer.extend_from_slice(&0u32.to_ne_bytes());
    // struct nfgenmsg: family, version, resource id (big-endian).
    buffer.push(family);
    buffer.push(0);
    buffer.extend_from_slice(&res_id.to_be_bytes());
    buffer.extend_from_slice(payload);
}

/// The batch's bytes, its messages numbered from `first_sequence`; and what each
/// numbered message does.
pub fn encode(plan: &NatPlan, first_sequence: u32) -> (Vec<u8>, Vec<(u32, String)>) {
    let mut buffer = Vec::new();
    let mut described = Vec::new();
    header(
        &mut buffer,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        first_sequence,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let mut sequence = first_sequence;
    for message in messages(plan) {
        sequence += 1;
        header(
            &mut buffer,
            message.kind,
            message.flags,
            sequence,
            message.family,
            0,
            &message.attributes.0,
        );
        described.push((sequence, message.what));
    }
    header(
        &mut buffer,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        sequence + 1,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (buffer, described)
}

/// Puts `plan` in force: the table `ip keelson` holds exactly it afterwards, or, when the
/// kernel refuses a message, is left as it was.
pub fn apply(plan: &NatPlan) -> Result<(), String> {
    // SAFETY: socket(2) with constant arguments; a new descriptor or -1.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_NETFILTER,
        )
    };
    if fd < 0 {
        return Err(format!(
            "cannot open a netfilter netlink socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a new descriptor, ours alone.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let first = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as u32)
        .unwrap_or(1);
    let (batch, described) = encode(plan, first);
    // SAFETY: send(2) of our buffer on our socket (the kernel is the default peer).
    let sent = unsafe { libc::send(socket.as_raw_fd(), batch.as_ptr().cast(), batch.len(), 0) };
    if sent < 0 || sent as usize != batch.len() {
        return Err(format!(
            "cannot send the nf_tables batch: {}",
            std::io::Error::last_os_error()
        ));
    }
    // One acknowledgement per message; the first refusal names its message.
    let mut acknowledged = 0;
    let mut buffer = vec![0u8; 65536];
    while acknowledged < described.len() {
        // SAFETY: recv(2) into our buffer.
        let received = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if received < 0 {
            return Err(format!(
                "cannot read the kernel's answer to the nf_tables batch: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut offset = 0;
        let received = received as usize;
        while offset + 16 <= received {
            let field = |at: usize| {
                u32::from_ne_bytes([buffer[at], buffer[at + 1], buffer[at + 2], buffer[at + 3]])
            };
            let length = field(offset) as usize;
            let kind = u16::from_ne_bytes([buffer[offset + 4], buffer[offset + 5]]);
            if length < 16 || offset + length > received {
                break;
            }
            if kind == NLMSG_ERROR && length >= 36 {
                let code = field(offset + 16) as i32;
                let sequence = field(offset + 16 + 4 + 8);
                if code != 0 {
                    let what = described
                        .iter()
                        .find(|(number, _)| *number == sequence)
                        .map(|(_, what)| what.as_str())
                        .unwrap_or("the batch");
                    return Err(format!(
                        "the kernel refused {what}: {} (the table ip {TABLE} is left as it was)",
                        std::io::Error::from_raw_os_error(-code)
                    ));
                }
                acknowledged += 1;
            }
            offset += (length + 3) & !3;
        }
    }
    Ok(())
}
