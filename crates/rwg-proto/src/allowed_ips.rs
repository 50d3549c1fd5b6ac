//! Cryptokey routing (whitepaper §2, PROTOCOL.md §8): which peer owns an inner IP address.
//!
//! Every peer owns a set of IP prefixes. An outgoing packet goes to the peer owning the longest
//! prefix that contains its destination; an incoming packet is accepted only if the peer it
//! came from owns the longest prefix containing its source. A prefix belongs to at most one
//! peer: inserting it for another peer moves it.
//!
//! The table is two path-compressed binary tries, one for IPv4 (keys are `u32`) and one for
//! IPv6 (keys are `u128`), in the spirit of the kernel's `allowedips.c`. Each node holds a
//! masked key and a prefix length; its children are chosen by the first bit after its prefix.
//! Nodes that own no prefix exist only where two branches meet, so a table of `n` prefixes has
//! at most `2n - 1` nodes, and a lookup visits at most 33 (IPv4) or 129 (IPv6) nodes, usually
//! far fewer. Removing a prefix removes the nodes it no longer needs, so an emptied table holds
//! no nodes at all.
//!
//! The value type `T` is whatever identifies a peer for the caller (an index or a small
//! handle); it must be `Copy + Ord`.
//!
//! Beside the tries, the table keeps each value's prefixes in a list (the kernel keeps one per
//! peer too), so that listing or removing one peer's prefixes costs time in proportion to that
//! peer's prefixes, not to the whole table: `wg show` and `wg setconf` of 100 000 peers stay
//! linear.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A prefix length longer than the address (more than 32 for IPv4, more than 128 for IPv6).
///
/// This is a caller error (a bad configuration), never something the network can cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidPrefix;

impl fmt::Display for InvalidPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("prefix length longer than the address")
    }
}

impl core::error::Error for InvalidPrefix {}

/// The routing table: longest-prefix match from IP prefixes to values of type `T`.
///
/// IPv4 and IPv6 prefixes live in separate tries; an IPv4-mapped IPv6 address is looked up as
/// IPv6, as the kernel does.
pub struct AllowedIps<T> {
    v4: Trie<u32, T>,
    v6: Trie<u128, T>,
    /// Each value's prefixes (masked), in no particular order.
    owned: BTreeMap<T, Vec<(IpAddr, u8)>>,
}

impl<T> fmt::Debug for AllowedIps<T> {
    // The trie itself can hold tens of thousands of nodes; the counts are what a log wants.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AllowedIps")
            .field("v4_prefixes", &self.v4.len)
            .field("v6_prefixes", &self.v6.len)
            .finish()
    }
}

impl<T: Copy + Ord> Default for AllowedIps<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Copy + Ord> AllowedIps<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self {
            v4: Trie::new(),
            v6: Trie::new(),
            owned: BTreeMap::new(),
        }
    }

    /// Gives the prefix `addr/cidr` to `value`.
    ///
    /// Host bits are ignored: `192.95.5.93/27` is stored as `192.95.5.64/27`. A prefix owned by
    /// another value moves to `value`.
    pub fn insert(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<(), InvalidPrefix> {
        let (prefix, previous) = match addr {
            IpAddr::V4(a) => {
                let key = u32::from(a);
                let previous = self.v4.insert(key, cidr, value)?;
                (IpAddr::V4(Ipv4Addr::from(key.masked(cidr))), previous)
            }
            IpAddr::V6(a) => {
                let key = u128::from(a);
                let previous = self.v6.insert(key, cidr, value)?;
                (IpAddr::V6(Ipv6Addr::from(key.masked(cidr))), previous)
            }
        };
        match previous {
            Some(old) if old == value => {}
            Some(old) => {
                self.forget(old, prefix, cidr);
                self.owned.entry(value).or_default().push((prefix, cidr));
            }
            None => self.owned.entry(value).or_default().push((prefix, cidr)),
        }
        Ok(())
    }

    /// Removes exactly the prefix `addr/cidr` (host bits ignored) if `value` owns it.
    ///
    /// Returns whether something was removed: `false` if the prefix is absent or owned by
    /// another value (which keeps it). Shorter or longer prefixes are never touched.
    pub fn remove(&mut self, addr: IpAddr, cidr: u8, value: T) -> Result<bool, InvalidPrefix> {
        let (prefix, removed) = match addr {
            IpAddr::V4(a) => {
                let key = u32::from(a);
                let removed = self.v4.remove(key, cidr, value)?;
                (IpAddr::V4(Ipv4Addr::from(key.masked(cidr))), removed)
            }
            IpAddr::V6(a) => {
                let key = u128::from(a);
                let removed = self.v6.remove(key, cidr, value)?;
                (IpAddr::V6(Ipv6Addr::from(key.masked(cidr))), removed)
            }
        };
        if removed {
            self.forget(value, prefix, cidr);
        }
        Ok(removed)
    }

    /// Drops `prefix/cidr` from `value`'s list.
    fn forget(&mut self, value: T, prefix: IpAddr, cidr: u8) {
        if let Some(list) = self.owned.get_mut(&value) {
            if let Some(at) = list.iter().position(|p| *p == (prefix, cidr)) {
                list.swap_remove(at);
            }
            if list.is_empty() {
                self.owned.remove(&value);
            }
        }
    }

    /// Removes every prefix owned by `value`, in both families. Costs time in proportion to
    /// that value's prefixes.
    pub fn remove_value(&mut self, value: T) {
        for (prefix, cidr) in self.owned.remove(&value).unwrap_or_default() {
            // The list and the tries agree, so these removals succeed; the prefix is masked
            // and the length valid because the tries accepted it.
            let _ = match prefix {
                IpAddr::V4(a) => self.v4.remove(u32::from(a), cidr, value),
                IpAddr::V6(a) => self.v6.remove(u128::from(a), cidr, value),
            };
        }
    }

    /// The value owning the longest prefix that contains `addr`, if any.
    #[inline]
    pub fn lookup(&self, addr: IpAddr) -> Option<T> {
        match addr {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }
    }

    /// [`lookup`](Self::lookup) for an IPv4 address in network byte order, as it sits in a
    /// packet header.
    #[inline]
    pub fn lookup_v4(&self, addr: [u8; 4]) -> Option<T> {
        self.v4.lookup(u32::from_be_bytes(addr))
    }

    /// [`lookup`](Self::lookup) for an IPv6 address in network byte order, as it sits in a
    /// packet header.
    #[inline]
    pub fn lookup_v6(&self, addr: [u8; 16]) -> Option<T> {
        self.v6.lookup(u128::from_be_bytes(addr))
    }

    /// The prefixes owned by `value`, as (masked address, prefix length): IPv4 first, then
    /// IPv6; within a family in address order, a shorter prefix before the longer ones it
    /// contains.
    pub fn prefixes_of(&self, value: T) -> Vec<(IpAddr, u8)> {
        let mut list = self.owned.get(&value).cloned().unwrap_or_default();
        list.sort_unstable();
        list
    }

    /// How many prefixes `value` owns.
    pub fn count_of(&self, value: T) -> usize {
        self.owned.get(&value).map_or(0, Vec::len)
    }

    /// Removes every prefix.
    pub fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.owned.clear();
    }

    /// The number of prefixes in the table, both families together.
    pub fn len(&self) -> usize {
        self.v4.len + self.v6.len
    }

    /// Whether the table holds no prefix.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An address as an unsigned integer, most significant bit first: bit 0 is the first bit of
/// the address on the wire.
trait Key: Copy + Eq {
    const BITS: u8;
    /// `self` with every bit from position `cidr` on cleared; `cidr <= BITS`.
    fn masked(self, cidr: u8) -> Self;
    /// How many leading bits `self` and `other` share (`BITS` if equal).
    fn common_bits(self, other: Self) -> u8;
    /// The bit at position `pos` (0 or 1); `pos < BITS`.
    fn bit(self, pos: u8) -> usize;
}

macro_rules! impl_key {
    ($t:ty) => {
        impl Key for $t {
            const BITS: u8 = <$t>::BITS as u8;

            #[inline]
            fn masked(self, cidr: u8) -> Self {
                // `checked_shl` covers cidr == 0, where the whole address is host bits.
                let mask = (!0 as $t)
                    .checked_shl(u32::from(<Self as Key>::BITS - cidr))
                    .unwrap_or(0);
                self & mask
            }

            #[inline]
            fn common_bits(self, other: Self) -> u8 {
                // At most BITS (128), so the cast is lossless.
                (self ^ other).leading_zeros() as u8
            }

            #[inline]
            fn bit(self, pos: u8) -> usize {
                ((self >> u32::from(<Self as Key>::BITS - 1 - pos)) & 1) as usize
            }
        }
    };
}

impl_key!(u32);
impl_key!(u128);

type Link<K, T> = Option<Box<Node<K, T>>>;

/// A trie node: the prefix `key/cidr` (host bits of `key` are zero), owned by `value` if it is
/// a configured prefix, or `None` if the node only joins two branches.
///
/// Invariants: a node without a value has exactly two children; a child's prefix is strictly
/// longer than its parent's and extends it, with bit `cidr` of the child's key selecting which
/// child it is.
struct Node<K, T> {
    key: K,
    cidr: u8,
    value: Option<T>,
    children: [Link<K, T>; 2],
}

impl<K: Key, T> Node<K, T> {
    fn leaf(key: K, cidr: u8, value: T) -> Box<Self> {
        Box::new(Self {
            key,
            cidr,
            value: Some(value),
            children: [None, None],
        })
    }

    /// Whether this node's prefix contains `key`.
    #[inline]
    fn contains(&self, key: K) -> bool {
        self.key.common_bits(key) >= self.cidr
    }
}

/// Restores the invariant at `link` after its node may have lost its value or a child: a node
/// without a value and with fewer than two children is replaced by its only child, if any.
fn collapse<K, T>(link: &mut Link<K, T>) {
    let Some(node) = link else { return };
    if node.value.is_some() {
        return;
    }
    match &mut node.children {
        [Some(_), Some(_)] => {}
        [left, right] => *link = left.take().or_else(|| right.take()),
    }
}

struct Trie<K, T> {
    root: Link<K, T>,
    /// Number of nodes that own a prefix.
    len: usize,
}

impl<K: Key, T: Copy + Eq> Trie<K, T> {
    fn new() -> Self {
        Self { root: None, len: 0 }
    }

    fn clear(&mut self) {
        // Dropping the tree recurses at most BITS + 1 levels deep.
        self.root = None;
        self.len = 0;
    }

    /// Returns the previous owner of the prefix, if it had one.
    fn insert(&mut self, key: K, cidr: u8, value: T) -> Result<Option<T>, InvalidPrefix> {
        if cidr > K::BITS {
            return Err(InvalidPrefix);
        }
        let previous = Self::insert_at(&mut self.root, key.masked(cidr), cidr, value);
        if previous.is_none() {
            self.len += 1;
        }
        Ok(previous)
    }

    /// Returns the previous owner (`None`: the prefix is new). Recursion depth is bounded by
    /// the trie depth, at most BITS + 1.
    fn insert_at(link: &mut Link<K, T>, key: K, cidr: u8, value: T) -> Option<T> {
        let Some(node) = link else {
            *link = Some(Node::leaf(key, cidr, value));
            return None;
        };
        let common = node.key.common_bits(key).min(node.cidr).min(cidr);
        if common == node.cidr {
            if node.cidr == cidr {
                return node.value.replace(value);
            }
            // The node's prefix contains the new, longer one (so node.cidr < BITS): descend.
            let side = key.bit(node.cidr);
            return Self::insert_at(&mut node.children[side], key, cidr, value);
        }
        let mut new = if common == cidr {
            // The new prefix contains the node's: it becomes the node's parent.
            Node::leaf(key, cidr, value)
        } else {
            // They diverge at bit `common`: join them under a node without a value.
            let mut join = Box::new(Node {
                key: key.masked(common),
                cidr: common,
                value: None,
                children: [None, None],
            });
            join.children[key.bit(common)] = Some(Node::leaf(key, cidr, value));
            join
        };
        // common < node.cidr <= BITS, so bit `common` of the old node's key exists.
        let old_side = node.key.bit(common);
        new.children[old_side] = link.take();
        *link = Some(new);
        None
    }

    fn remove(&mut self, key: K, cidr: u8, value: T) -> Result<bool, InvalidPrefix> {
        if cidr > K::BITS {
            return Err(InvalidPrefix);
        }
        let removed = Self::remove_at(&mut self.root, key.masked(cidr), cidr, value);
        if removed {
            self.len -= 1;
        }
        Ok(removed)
    }

    /// Recursion depth is bounded by the trie depth, at most BITS + 1.
    fn remove_at(link: &mut Link<K, T>, key: K, cidr: u8, value: T) -> bool {
        let Some(node) = link else { return false };
        if node.cidr > cidr || !node.contains(key) {
            return false;
        }
        let removed = if node.cidr == cidr {
            if node.value != Some(value) {
                return false;
            }
            node.value = None;
            true
        } else {
            Self::remove_at(&mut node.children[key.bit(node.cidr)], key, cidr, value)
        };
        if removed {
            collapse(link);
        }
        removed
    }

    #[inline]
    fn lookup(&self, key: K) -> Option<T> {
        let mut best = None;
        let mut next = self.root.as_deref();
        while let Some(node) = next {
            if !node.contains(key) {
                break;
            }
            if node.value.is_some() {
                best = node.value;
            }
            if node.cidr == K::BITS {
                break;
            }
            next = node.children[key.bit(node.cidr)].as_deref();
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("test address")
    }

    /// Checks the trie invariants below `link` and returns (nodes, nodes owning a prefix).
    fn check_node<K: Key + fmt::Debug, T: Copy + Eq>(
        link: &Link<K, T>,
        parent: Option<(K, u8, usize)>,
    ) -> (usize, usize) {
        let Some(node) = link else { return (0, 0) };
        assert!(node.cidr <= K::BITS);
        assert_eq!(
            node.key,
            node.key.masked(node.cidr),
            "host bits set in a node"
        );
        if let Some((pkey, pcidr, side)) = parent {
            assert!(node.cidr > pcidr, "child not longer than parent");
            assert!(node.key.common_bits(pkey) >= pcidr, "child outside parent");
            assert_eq!(node.key.bit(pcidr), side, "child on the wrong side");
        }
        if node.value.is_none() {
            assert!(
                node.children[0].is_some() && node.children[1].is_some(),
                "a node without a value must join two branches"
            );
        }
        let mut nodes = 1;
        let mut owned = usize::from(node.value.is_some());
        for (side, child) in node.children.iter().enumerate() {
            let (n, o) = check_node(child, Some((node.key, node.cidr, side)));
            nodes += n;
            owned += o;
        }
        (nodes, owned)
    }

    fn check_trie<K: Key + fmt::Debug, T: Copy + Eq>(trie: &Trie<K, T>) {
        let (nodes, owned) = check_node(&trie.root, None);
        assert_eq!(owned, trie.len, "len out of step with the trie");
        assert!(
            nodes <= (2 * owned).saturating_sub(1),
            "{nodes} nodes for {owned} prefixes"
        );
    }

    fn walk<K: Key, T: Copy>(link: &Link<K, T>, out: &mut Vec<(T, K, u8)>) {
        if let Some(node) = link {
            if let Some(v) = node.value {
                out.push((v, node.key, node.cidr));
            }
            walk(&node.children[0], out);
            walk(&node.children[1], out);
        }
    }

    /// The tries' invariants, and the per-value lists agree with the tries exactly.
    fn check<T: Copy + Ord + fmt::Debug>(table: &AllowedIps<T>) {
        check_trie(&table.v4);
        check_trie(&table.v6);
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        walk(&table.v4.root, &mut v4);
        walk(&table.v6.root, &mut v6);
        let mut from_tries: Vec<(T, IpAddr, u8)> = v4
            .into_iter()
            .map(|(v, k, c)| (v, IpAddr::V4(Ipv4Addr::from(k)), c))
            .chain(
                v6.into_iter()
                    .map(|(v, k, c)| (v, IpAddr::V6(Ipv6Addr::from(k)), c)),
            )
            .collect();
        let mut from_lists: Vec<(T, IpAddr, u8)> = table
            .owned
            .iter()
            .flat_map(|(v, l)| l.iter().map(move |(a, c)| (*v, *a, *c)))
            .collect();
        from_tries.sort_unstable();
        from_lists.sort_unstable();
        assert_eq!(from_tries, from_lists);
        assert!(table.owned.values().all(|l| !l.is_empty()));
    }

    // Values are small letters standing for peers, as in the kernel's selftest.
    const INSERTS: &[(&str, u8, char)] = &[
        ("0.0.0.0", 0, 'z'),
        ("10.0.0.0", 8, 'a'),
        ("10.1.0.0", 16, 'b'),
        ("10.1.2.0", 24, 'c'),
        ("10.1.2.3", 32, 'd'),
        ("10.1.2.128", 25, 'e'),
        ("192.95.5.93", 27, 'f'), // stored as 192.95.5.64/27
        ("192.95.5.70", 32, 'g'),
        ("172.16.0.0", 12, 'h'),
        ("172.31.255.255", 32, 'a'),
        ("128.0.0.0", 1, 'b'),
        ("::", 0, 'y'),
        ("2001:db8::", 32, 'a'),
        ("2001:db8:1::", 48, 'b'),
        ("2001:db8:1::1", 128, 'c'),
        ("2001:db8:1:8000::", 49, 'd'),
        ("fe80::1234", 10, 'e'), // stored as fe80::/10
        ("::ffff:10.1.2.3", 128, 'f'),
        ("8000::", 1, 'g'),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 128, 'h'),
    ];

    const LOOKUPS: &[(&str, Option<char>)] = &[
        ("10.1.2.3", Some('d')),
        ("10.1.2.4", Some('c')),
        ("10.1.2.127", Some('c')),
        ("10.1.2.128", Some('e')),
        ("10.1.2.255", Some('e')),
        ("10.1.3.0", Some('b')),
        ("10.2.0.0", Some('a')),
        ("10.255.255.255", Some('a')),
        ("11.0.0.0", Some('z')),
        ("9.255.255.255", Some('z')),
        ("0.0.0.0", Some('z')),
        ("192.95.5.64", Some('f')),
        ("192.95.5.93", Some('f')),
        ("192.95.5.95", Some('f')),
        ("192.95.5.70", Some('g')),
        ("192.95.5.96", Some('b')),
        ("192.95.5.63", Some('b')),
        ("172.16.0.1", Some('h')),
        ("172.31.255.254", Some('h')),
        ("172.31.255.255", Some('a')),
        ("172.32.0.0", Some('b')),
        ("255.255.255.255", Some('b')),
        ("127.255.255.255", Some('z')),
        ("2001:db8::1", Some('a')),
        ("2001:db8:1::1", Some('c')),
        ("2001:db8:1::2", Some('b')),
        ("2001:db8:1:7fff::", Some('b')),
        ("2001:db8:1:8000::", Some('d')),
        ("2001:db8:1:ffff:ffff::", Some('d')),
        ("2001:db8:2::", Some('a')),
        ("2001:db9::", Some('y')),
        ("fe80::", Some('e')),
        ("febf:ffff::", Some('e')),
        ("fec0::", Some('g')),
        ("::ffff:10.1.2.3", Some('f')),
        ("::ffff:10.1.2.4", Some('y')),
        ("::", Some('y')),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some('h')),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe", Some('g')),
    ];

    fn table() -> AllowedIps<char> {
        let mut t = AllowedIps::new();
        for &(addr, cidr, value) in INSERTS {
            t.insert(ip(addr), cidr, value).expect("valid prefix");
        }
        check(&t);
        t
    }

    fn prefixes(t: &AllowedIps<char>, value: char) -> Vec<(IpAddr, u8)> {
        let mut v: Vec<_> = t.prefixes_of(value);
        v.sort();
        v
    }

    #[test]
    fn table_lookups() {
        let t = table();
        assert_eq!(t.len(), INSERTS.len());
        for &(addr, want) in LOOKUPS {
            assert_eq!(t.lookup(ip(addr)), want, "lookup {addr}");
            match ip(addr) {
                IpAddr::V4(a) => assert_eq!(t.lookup_v4(a.octets()), want, "lookup_v4 {addr}"),
                IpAddr::V6(a) => assert_eq!(t.lookup_v6(a.octets()), want, "lookup_v6 {addr}"),
            }
        }
    }

    #[test]
    fn empty_table_finds_nothing() {
        let t = AllowedIps::<u32>::default();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.0.0.1")), None);
        assert_eq!(t.lookup_v6([0; 16]), None);
        assert_eq!(t.count_of(0), 0);
    }

    #[test]
    fn host_bits_are_ignored() {
        let t = table();
        assert_eq!(
            prefixes(&t, 'f'),
            vec![(ip("192.95.5.64"), 27), (ip("::ffff:10.1.2.3"), 128)]
        );
        assert_eq!(
            prefixes(&t, 'e'),
            vec![(ip("10.1.2.128"), 25), (ip("fe80::"), 10)]
        );
        // The same prefix spelt with other host bits is the same prefix.
        let mut t = AllowedIps::new();
        t.insert(ip("192.95.5.93"), 27, 1u8).expect("valid");
        t.insert(ip("192.95.5.64"), 27, 1).expect("valid");
        t.insert(ip("192.95.5.95"), 27, 1).expect("valid");
        assert_eq!(t.len(), 1);
        assert_eq!(t.remove(ip("192.95.5.66"), 27, 1), Ok(true));
        assert!(t.is_empty());
        check(&t);
    }

    #[test]
    fn prefixes_of_lists_in_address_order() {
        let t = table();
        let all: Vec<_> = t.prefixes_of('a');
        assert_eq!(
            all,
            vec![
                (ip("10.0.0.0"), 8),
                (ip("172.31.255.255"), 32),
                (ip("2001:db8::"), 32),
            ]
        );
        let z: Vec<_> = t.prefixes_of('z');
        assert_eq!(z, vec![(ip("0.0.0.0"), 0)]);
        assert_eq!(t.count_of('q'), 0);
    }

    #[test]
    fn insert_moves_prefix_to_new_value() {
        let mut t = table();
        t.insert(ip("10.1.0.0"), 16, 'x').expect("valid");
        assert_eq!(t.len(), INSERTS.len(), "a moved prefix is not a new one");
        assert_eq!(t.lookup(ip("10.1.3.0")), Some('x'));
        assert_eq!(
            t.lookup(ip("10.1.2.4")),
            Some('c'),
            "longer prefixes keep their owner"
        );
        assert_eq!(
            prefixes(&t, 'b'),
            vec![(ip("128.0.0.0"), 1), (ip("2001:db8:1::"), 48)]
        );
        // The old owner can no longer remove it.
        assert_eq!(t.remove(ip("10.1.0.0"), 16, 'b'), Ok(false));
        assert_eq!(t.lookup(ip("10.1.3.0")), Some('x'));
        t.insert(ip("::"), 0, 'x').expect("valid");
        assert_eq!(t.lookup(ip("2001:db9::")), Some('x'));
        check(&t);
    }

    #[test]
    fn remove_only_exact_prefix_owned_by_value() {
        let mut t = table();
        // Wrong owner, shorter, longer, absent: nothing happens.
        assert_eq!(t.remove(ip("10.1.2.0"), 24, 'a'), Ok(false));
        assert_eq!(t.remove(ip("10.1.2.0"), 23, 'c'), Ok(false));
        assert_eq!(t.remove(ip("10.1.2.0"), 25, 'c'), Ok(false));
        assert_eq!(t.remove(ip("10.9.0.0"), 16, 'b'), Ok(false));
        assert_eq!(t.remove(ip("2001:db8:1::"), 49, 'b'), Ok(false));
        assert_eq!(t.len(), INSERTS.len());
        check(&t);

        assert_eq!(t.remove(ip("10.1.2.0"), 24, 'c'), Ok(true));
        assert_eq!(t.remove(ip("10.1.2.0"), 24, 'c'), Ok(false), "already gone");
        assert_eq!(t.len(), INSERTS.len() - 1);
        assert_eq!(t.lookup(ip("10.1.2.4")), Some('b'));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some('d'));
        assert_eq!(t.lookup(ip("10.1.2.200")), Some('e'));
        check(&t);

        assert_eq!(t.remove(ip("2001:db8:1::"), 48, 'b'), Ok(true));
        assert_eq!(t.lookup(ip("2001:db8:1::2")), Some('a'));
        assert_eq!(t.lookup(ip("2001:db8:1::1")), Some('c'));
        assert_eq!(t.lookup(ip("2001:db8:1:8000::")), Some('d'));
        assert_eq!(t.remove(ip("0.0.0.0"), 0, 'z'), Ok(true));
        assert_eq!(t.lookup(ip("11.0.0.0")), None);
        assert_eq!(t.lookup(ip("200.0.0.0")), Some('b'));
        check(&t);
    }

    #[test]
    fn remove_value_removes_all_and_only_its_prefixes() {
        let mut t = table();
        t.remove_value('a');
        assert_eq!(t.len(), INSERTS.len() - 3);
        assert_eq!(t.count_of('a'), 0);
        assert_eq!(t.lookup(ip("10.2.0.0")), Some('z'));
        assert_eq!(t.lookup(ip("172.31.255.255")), Some('h'));
        assert_eq!(t.lookup(ip("2001:db8::1")), Some('y'));
        assert_eq!(t.lookup(ip("10.1.2.3")), Some('d'));
        check(&t);
        t.remove_value('a');
        assert_eq!(t.len(), INSERTS.len() - 3);
        for value in "bcdefghyz".chars() {
            t.remove_value(value);
            check(&t);
        }
        assert!(t.is_empty());
        assert!(
            t.v4.root.is_none() && t.v6.root.is_none(),
            "emptied table keeps nodes"
        );
    }

    #[test]
    fn removing_everything_frees_every_node() {
        let mut t = table();
        for &(addr, cidr, value) in INSERTS.iter().rev() {
            assert_eq!(t.remove(ip(addr), cidr, value), Ok(true), "{addr}/{cidr}");
            check(&t);
        }
        assert!(t.is_empty());
        assert!(t.v4.root.is_none() && t.v6.root.is_none());
        let mut t = table();
        t.clear();
        assert!(t.is_empty());
        assert_eq!(t.lookup(ip("10.1.2.3")), None);
    }

    #[test]
    fn invalid_prefix_lengths_are_refused() {
        let mut t = table();
        assert_eq!(t.insert(ip("10.0.0.0"), 33, 'x'), Err(InvalidPrefix));
        assert_eq!(t.insert(ip("::"), 129, 'x'), Err(InvalidPrefix));
        assert_eq!(t.insert(ip("::"), 255, 'x'), Err(InvalidPrefix));
        assert_eq!(t.remove(ip("10.0.0.0"), 33, 'a'), Err(InvalidPrefix));
        assert_eq!(t.remove(ip("::"), 129, 'a'), Err(InvalidPrefix));
        assert_eq!(t.len(), INSERTS.len());
        assert_eq!(t.count_of('x'), 0);
        // The longest valid lengths are accepted.
        assert_eq!(t.insert(ip("1.2.3.4"), 32, 'x'), Ok(()));
        assert_eq!(t.insert(ip("::1"), 128, 'x'), Ok(()));
        assert_eq!(t.lookup(ip("1.2.3.4")), Some('x'));
        assert_eq!(t.lookup(ip("::1")), Some('x'));
        check(&t);
    }

    #[test]
    fn every_prefix_length_is_accepted_or_refused_without_panic() {
        let mut t = AllowedIps::new();
        for cidr in 0..=u8::MAX {
            for addr in [
                ip("255.255.255.255"),
                ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ] {
                let valid = cidr <= if addr.is_ipv4() { 32 } else { 128 };
                let want = if valid { Ok(()) } else { Err(InvalidPrefix) };
                assert_eq!(t.insert(addr, cidr, cidr), want, "{addr}/{cidr}");
                assert_eq!(
                    t.lookup(addr),
                    Some(cidr.min(if addr.is_ipv4() { 32 } else { 128 }))
                );
            }
        }
        assert_eq!(t.len(), 33 + 129);
        check(&t);
        for cidr in 0..=u8::MAX {
            for addr in [
                ip("255.255.255.255"),
                ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            ] {
                let valid = cidr <= if addr.is_ipv4() { 32 } else { 128 };
                let want = if valid { Ok(true) } else { Err(InvalidPrefix) };
                assert_eq!(t.remove(addr, cidr, cidr), want, "{addr}/{cidr}");
            }
            check(&t);
        }
        assert!(t.is_empty());
    }

    #[test]
    fn key_helpers_at_the_edges() {
        assert_eq!(0xffff_ffffu32.masked(0), 0);
        assert_eq!(0xffff_ffffu32.masked(32), 0xffff_ffff);
        assert_eq!(0xffff_ffffu32.masked(1), 0x8000_0000);
        assert_eq!(u128::MAX.masked(0), 0);
        assert_eq!(u128::MAX.masked(128), u128::MAX);
        assert_eq!(u128::MAX.masked(127), u128::MAX - 1);
        assert_eq!(0x8000_0000u32.bit(0), 1);
        assert_eq!(1u32.bit(31), 1);
        assert_eq!(1u32.bit(30), 0);
        assert_eq!(1u128.bit(127), 1);
        assert_eq!(5u32.common_bits(5), 32);
        assert_eq!(0u128.common_bits(1), 127);
    }

    /// The reference: a list of prefixes as bytes, scanned bit by bit, sharing no code with
    /// the trie.
    struct Naive {
        entries: Vec<(Vec<u8>, u8, u8)>,
    }

    fn naive_matches(prefix: &[u8], cidr: u8, addr: &[u8]) -> bool {
        (0..usize::from(cidr)).all(|i| (prefix[i / 8] ^ addr[i / 8]) & (0x80 >> (i % 8)) == 0)
    }

    fn naive_mask(addr: &[u8], cidr: u8) -> Vec<u8> {
        let mut out = addr.to_vec();
        for i in usize::from(cidr)..addr.len() * 8 {
            out[i / 8] &= !(0x80 >> (i % 8));
        }
        out
    }

    impl Naive {
        fn insert(&mut self, addr: &[u8], cidr: u8, value: u8) {
            let key = naive_mask(addr, cidr);
            match self.entries.iter_mut().find(|e| e.0 == key && e.1 == cidr) {
                Some(e) => e.2 = value,
                None => self.entries.push((key, cidr, value)),
            }
        }

        fn remove(&mut self, addr: &[u8], cidr: u8, value: u8) -> bool {
            let key = naive_mask(addr, cidr);
            let found = self
                .entries
                .iter()
                .position(|e| e.0 == key && e.1 == cidr && e.2 == value);
            found.map(|i| self.entries.swap_remove(i)).is_some()
        }

        fn lookup(&self, addr: &[u8]) -> Option<u8> {
            self.entries
                .iter()
                .filter(|e| naive_matches(&e.0, e.1, addr))
                .max_by_key(|e| e.1)
                .map(|e| e.2)
        }

        fn prefixes_of(&self, value: u8) -> Vec<(Vec<u8>, u8)> {
            let mut v: Vec<_> = self
                .entries
                .iter()
                .filter(|e| e.2 == value)
                .map(|e| (e.0.clone(), e.1))
                .collect();
            v.sort();
            v
        }
    }

    fn to_ip(bytes: &[u8]) -> IpAddr {
        match bytes.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")),
            _ => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")),
        }
    }

    fn octets(addr: IpAddr) -> Vec<u8> {
        match addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    /// Random operations on both the trie and the reference, for one address length.
    ///
    /// Addresses are drawn near a few base addresses and prefix lengths lean short, so prefixes
    /// overlap and nest a lot; a few values own many prefixes, so moves happen.
    fn compare_with_naive(seed: u64, addr_len: usize, steps: usize) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let bits = u32::try_from(addr_len * 8).expect("small");
        let mut bases = vec![vec![0u8; addr_len]; 6];
        for base in &mut bases {
            rng.fill_bytes(base);
        }
        let random_addr = |rng: &mut ChaCha8Rng| {
            let mut addr = bases[rng.next_u32() as usize % bases.len()].clone();
            // Flip a few bits, anywhere, so addresses share prefixes of every length.
            for _ in 0..rng.next_u32() % 4 {
                let i = rng.next_u32() % bits;
                addr[(i / 8) as usize] ^= 0x80 >> (i % 8);
            }
            if rng.next_u32() % 8 == 0 {
                rng.fill_bytes(&mut addr);
            }
            addr
        };
        let random_cidr = |rng: &mut ChaCha8Rng| {
            let r = rng.next_u32();
            let cidr = match r % 4 {
                0 => r / 4 % 9,          // very short: 0..=8
                1 => bits - r / 4 % 3,   // host routes and nearly
                _ => r / 4 % (bits + 1), // anything
            };
            u8::try_from(cidr).expect("at most 128")
        };

        let mut trie = AllowedIps::new();
        let mut naive = Naive {
            entries: Vec::new(),
        };
        for step in 0..steps {
            let op = rng.next_u32() % 100;
            let value = (rng.next_u32() % 5) as u8;
            if op < 40 {
                let (addr, cidr) = (random_addr(&mut rng), random_cidr(&mut rng));
                trie.insert(to_ip(&addr), cidr, value).expect("valid");
                naive.insert(&addr, cidr, value);
            } else if op < 60 {
                // Remove an existing prefix, spelt with random host bits, half the time with
                // its owner and half the time with a random value.
                let (addr, cidr, owner) = if naive.entries.is_empty() || op < 45 {
                    (random_addr(&mut rng), random_cidr(&mut rng), value)
                } else {
                    let e = &naive.entries[rng.next_u32() as usize % naive.entries.len()];
                    let mut addr = e.0.clone();
                    for i in u32::from(e.1)..bits {
                        if rng.next_u32() % 2 == 0 {
                            addr[(i / 8) as usize] |= 0x80 >> (i % 8);
                        }
                    }
                    (addr, e.1, if op < 53 { e.2 } else { value })
                };
                let want = naive.remove(&addr, cidr, owner);
                assert_eq!(
                    trie.remove(to_ip(&addr), cidr, owner),
                    Ok(want),
                    "step {step}"
                );
            } else if op < 61 {
                trie.remove_value(value);
                naive.entries.retain(|e| e.2 != value);
            } else {
                let addr = random_addr(&mut rng);
                assert_eq!(
                    trie.lookup(to_ip(&addr)),
                    naive.lookup(&addr),
                    "step {step}"
                );
            }
            assert_eq!(trie.len(), naive.entries.len(), "step {step}");
            if step % 64 == 0 {
                check(&trie);
                for v in 0..5 {
                    let mut got: Vec<_> = trie
                        .prefixes_of(v)
                        .into_iter()
                        .map(|(a, c)| (octets(a), c))
                        .collect();
                    got.sort();
                    assert_eq!(got, naive.prefixes_of(v), "step {step}");
                }
            }
        }
        check(&trie);
        // Every stored prefix is still found through an address inside it.
        for (key, _, _) in &naive.entries {
            assert_eq!(trie.lookup(to_ip(key)), naive.lookup(key));
        }
        for v in 0..5 {
            trie.remove_value(v);
        }
        assert!(trie.is_empty());
        assert!(
            trie.v4.root.is_none() && trie.v6.root.is_none(),
            "nodes leaked"
        );
    }

    #[test]
    fn random_v4_matches_naive() {
        for seed in 0..4 {
            compare_with_naive(seed, 4, 5_000);
        }
    }

    #[test]
    fn random_v6_matches_naive() {
        for seed in 100..104 {
            compare_with_naive(seed, 16, 5_000);
        }
    }

    #[test]
    fn large_config_many_prefixes_on_one_value() {
        // 255 × 256 = 65 280 prefixes, as in the kernel's end-to-end test, in each family.
        let mut t = AllowedIps::new();
        for i in 1..=255u8 {
            for j in 0..=255u8 {
                t.insert(IpAddr::from([10, i, j, 0]), 24, 7u32)
                    .expect("valid");
                let v6 = Ipv6Addr::new(0xfd00, u16::from(i), u16::from(j), 0, 0, 0, 0, 0);
                t.insert(IpAddr::V6(v6), 48, 7).expect("valid");
            }
        }
        assert_eq!(t.len(), 2 * 65_280);
        check(&t);
        for i in (1..=255u8).step_by(7) {
            for j in (0..=255u8).step_by(5) {
                assert_eq!(t.lookup_v4([10, i, j, 99]), Some(7));
                let v6 = Ipv6Addr::new(0xfd00, u16::from(i), u16::from(j), 9, 0, 0, 0, 1);
                assert_eq!(t.lookup_v6(v6.octets()), Some(7));
            }
        }
        assert_eq!(t.lookup_v4([10, 0, 1, 1]), None);
        assert_eq!(t.lookup_v4([11, 1, 1, 1]), None);
        assert_eq!(t.lookup(ip("fd00:0:1::")), None);
        assert_eq!(t.lookup(ip("fd00:100::")), None);
        assert_eq!(t.count_of(7), 2 * 65_280);
        t.remove_value(7);
        assert!(t.is_empty());
        assert!(t.v4.root.is_none() && t.v6.root.is_none());
    }

    #[test]
    fn large_config_forty_values_with_fifty_two_prefixes_over_defaults() {
        let mut t = AllowedIps::new();
        // Value 40 owns both default routes; everything else overlaps them.
        t.insert(ip("0.0.0.0"), 0, 40u32).expect("valid");
        t.insert(ip("::"), 0, 40).expect("valid");
        for p in 0..40u8 {
            for k in 0..26u8 {
                t.insert(IpAddr::from([172, 16 + p, k, 0]), 24, u32::from(p))
                    .expect("valid");
                let v6 = Ipv6Addr::new(0xfd00, 0, u16::from(p), u16::from(k), 0, 0, 0, 0);
                t.insert(IpAddr::V6(v6), 64, u32::from(p)).expect("valid");
            }
        }
        assert_eq!(t.len(), 40 * 52 + 2);
        check(&t);
        for p in 0..40u8 {
            assert_eq!(t.count_of(u32::from(p)), 52);
            for k in 0..26u8 {
                assert_eq!(t.lookup_v4([172, 16 + p, k, 1]), Some(u32::from(p)));
                let v6 = Ipv6Addr::new(0xfd00, 0, u16::from(p), u16::from(k), 1, 2, 3, 4);
                assert_eq!(t.lookup_v6(v6.octets()), Some(u32::from(p)));
            }
            assert_eq!(t.lookup_v4([172, 16 + p, 26, 1]), Some(40));
        }
        assert_eq!(t.lookup(ip("8.8.8.8")), Some(40));
        assert_eq!(t.lookup(ip("2606:4700::1111")), Some(40));
        // Dropping the odd values exposes the defaults under their prefixes.
        for p in (1..40u32).step_by(2) {
            t.remove_value(p);
        }
        assert_eq!(t.len(), 20 * 52 + 2);
        check(&t);
        assert_eq!(t.lookup_v4([172, 17, 3, 1]), Some(40));
        assert_eq!(t.lookup_v4([172, 18, 3, 1]), Some(2));
        assert_eq!(t.lookup(ip("fd00:0:3:3::1")), Some(40));
        assert_eq!(t.lookup(ip("fd00:0:4:3::1")), Some(4));
        t.remove_value(40);
        assert_eq!(t.lookup(ip("8.8.8.8")), None);
        assert_eq!(t.lookup(ip("fd00:0:3:3::1")), None);
        assert_eq!(t.lookup(ip("fd00:0:4:3::1")), Some(4));
        t.clear();
        assert!(t.is_empty());
    }
}
