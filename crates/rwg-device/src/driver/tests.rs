//! The daemon's real configuration path, [`DriverConfig`], driven through UAPI requests.
//!
//! `Driver::new(0)` binds real UDP sockets on a free port and needs neither root nor a TUN; no
//! packet thread runs, so what the core queues (handshake initiations) stays in its outbox
//! where these tests read it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rwg_proto::device::{DropReason, Sent, HEADROOM, TAILROOM};

use super::{Driver, DriverConfig};
use crate::uapi::tests::{
    key, numbered_key, set, setconf_body, shared, snap, talk, K1, K2, K3, ZERO,
};
use crate::udp::UdpSockets;

/// Size of a handshake initiation (message type 1) on the wire.
const INITIATION_LEN: usize = 148;

fn driver_config() -> Mutex<DriverConfig> {
    Mutex::new(DriverConfig(Driver::new(0).expect("bind UDP sockets")))
}

fn driver(dev: &Mutex<DriverConfig>) -> std::sync::Arc<Driver> {
    std::sync::Arc::clone(&dev.lock().expect("lock").0)
}

/// A port free on both families right now (bound and released).
fn free_port() -> u16 {
    UdpSockets::bind(0).expect("bind").port()
}

/// Whether some socket holds UDP `port` on IPv4.
fn port_held(port: u16) -> bool {
    match UdpSocket::bind(("0.0.0.0", port)) {
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => true,
        Err(e) => panic!("probing port {port}: {e}"),
    }
}

/// Hands the core an IPv4 packet for `dst` as the TUN reader would, and says where it went:
/// the endpoint a handshake initiation was queued for (no session yet), or what else happened.
fn route(d: &Driver, dst: [u8; 4]) -> Result<SocketAddr, Sent> {
    let mut buf = vec![0u8; HEADROOM + 1500 + TAILROOM];
    let packet = &mut buf[HEADROOM..HEADROOM + 20];
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&20u16.to_be_bytes());
    packet[12..16].copy_from_slice(&[10, 9, 9, 9]);
    packet[16..20].copy_from_slice(&dst);
    match d.core.handle_packet(d.clock.now(), &mut buf, 20) {
        Sent::Staged => {
            let mut out = vec![0u8; 2048];
            let t = d
                .core
                .poll_transmit(&mut out)
                .expect("an initiation queued");
            assert_eq!((t.len, out[0]), (INITIATION_LEN, 1), "not an initiation");
            assert!(
                d.core.poll_transmit(&mut out).is_none(),
                "one datagram only"
            );
            Ok(t.destination)
        }
        other => Err(other),
    }
}

// The request-level tests MemoryDevice also runs (uapi.rs), against the real thing.

#[test]
fn replace_peers() {
    shared::replace_peers(&driver_config());
}

#[test]
fn peer_keys() {
    shared::peer_keys(&driver_config());
}

#[test]
fn allowed_ip_moves_between_peers() {
    shared::allowed_ip_moves_between_peers(&driver_config());
}

#[test]
fn update_only() {
    shared::update_only(&driver_config());
}

#[test]
fn remove() {
    shared::remove(&driver_config());
}

#[test]
fn own_public_key_section_is_ignored() {
    shared::own_public_key_section_is_ignored(&driver_config());
}

#[test]
fn persistent_keepalive_on_and_off() {
    shared::persistent_keepalive_on_and_off(&driver_config());
}

// What only the real device does.

#[test]
fn private_key_change_removes_the_peer_with_the_new_public_key() {
    let dev = driver_config();
    let d = driver(&dev);
    // K1's public key, computed independently of the device.
    let own = *rwg_proto::crypto::PrivateKey::from_bytes(key(K1))
        .public_key()
        .as_bytes();
    let own_hex: String = own.iter().map(|b| format!("{b:02x}")).collect();
    set(&dev, &format!("public_key={own_hex}\npublic_key={K2}\n"));
    assert!(d
        .core
        .has_peer(&rwg_proto::crypto::PublicKey::from_bytes(own)));
    assert_eq!(set(&dev, &format!("private_key={K1}\n")), "errno=0\n\n");
    assert!(!d
        .core
        .has_peer(&rwg_proto::crypto::PublicKey::from_bytes(own)));
    assert_eq!(d.core.public_key().map(|k| *k.as_bytes()), Some(own));
    let peers = snap(&dev).peers;
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, key(K2));
    // Clearing the key leaves the other peers alone.
    assert_eq!(set(&dev, &format!("private_key={ZERO}\n")), "errno=0\n\n");
    assert!(d.core.private_key().is_none());
    assert_eq!(snap(&dev).peers.len(), 1);
}

#[test]
fn listen_port_rebinds_and_get_reports_it() {
    let dev = driver_config();
    let d = driver(&dev);
    let first = snap(&dev).listen_port;
    assert_ne!(first, 0);
    assert!(port_held(first), "the reported port {first} is not bound");
    assert_eq!(d.sockets().port(), first);

    // 0 picks a new port; the old one is released.
    assert_eq!(set(&dev, "listen_port=0\n"), "errno=0\n\n");
    let second = snap(&dev).listen_port;
    assert_ne!(second, 0);
    assert_ne!(second, first);
    assert!(port_held(second));
    assert!(!port_held(first), "old port {first} still bound");
    {
        let sockets = d.sockets();
        for s in [sockets.v4(), sockets.v6()].into_iter().flatten() {
            assert_eq!(s.local_addr().expect("addr").port(), second);
        }
    }
    let get = talk(&dev, "get=1\n\n");
    assert!(get.starts_with(&format!("listen_port={second}\n")), "{get}");

    // An explicit port.
    let wanted = free_port();
    assert_eq!(set(&dev, &format!("listen_port={wanted}\n")), "errno=0\n\n");
    assert_eq!(snap(&dev).listen_port, wanted);
    assert!(port_held(wanted));
    assert!(!port_held(second));

    // The same port again keeps the sockets (no new generation of readers).
    let generation = d.generation.load(std::sync::atomic::Ordering::Acquire);
    assert_eq!(set(&dev, &format!("listen_port={wanted}\n")), "errno=0\n\n");
    assert_eq!(
        d.generation.load(std::sync::atomic::Ordering::Acquire),
        generation
    );

    // A port someone else holds: EADDRINUSE, and the device keeps its sockets.
    let squatter = UdpSocket::bind("0.0.0.0:0").expect("bind");
    let taken = squatter.local_addr().expect("addr").port();
    assert_eq!(
        set(&dev, &format!("listen_port={taken}\n")),
        "errno=-98\n\n"
    );
    assert_eq!(snap(&dev).listen_port, wanted);
    assert_eq!(d.sockets().port(), wanted);
    assert!(port_held(wanted));
}

#[test]
#[ignore = "needs CAP_NET_ADMIN for SO_MARK: run with cargo test -- --ignored as root"]
fn fwmark_is_set_on_the_sockets() {
    let dev = driver_config();
    let d = driver(&dev);
    let marks = |d: &Driver| -> Vec<u32> {
        let sockets = d.sockets();
        [sockets.v4(), sockets.v6()]
            .into_iter()
            .flatten()
            .map(|s| crate::sys::udp::mark(s).expect("SO_MARK"))
            .collect()
    };
    assert_eq!(
        set(&dev, "fwmark=66\n"),
        "errno=0\n\n",
        "setting SO_MARK needs CAP_NET_ADMIN"
    );
    assert!(!marks(&d).is_empty());
    assert!(marks(&d).iter().all(|&m| m == 66), "{:?}", marks(&d));
    let get = talk(&dev, "get=1\n\n");
    assert!(get.contains("\nfwmark=66\n"), "{get}");
    // New sockets get the mark too.
    assert_eq!(set(&dev, "listen_port=0\n"), "errno=0\n\n");
    assert!(marks(&d).iter().all(|&m| m == 66), "{:?}", marks(&d));
    // 0 clears it, on the sockets and in get.
    assert_eq!(set(&dev, "fwmark=0\n"), "errno=0\n\n");
    assert!(marks(&d).iter().all(|&m| m == 0), "{:?}", marks(&d));
    assert!(!talk(&dev, "get=1\n\n").contains("fwmark"));
}

#[test]
fn persistent_keepalive_starts_a_handshake() {
    let dev = driver_config();
    let d = driver(&dev);
    let endpoint: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
    // Without a keepalive, configuring a peer sends nothing.
    set(
        &dev,
        &format!("private_key={K1}\npublic_key={K2}\nendpoint={endpoint}\n"),
    );
    let mut out = vec![0u8; 2048];
    assert!(d.core.poll_transmit(&mut out).is_none());
    // Switching it on sends an initiation at once, counted in tx_bytes.
    set(
        &dev,
        &format!("public_key={K2}\npersistent_keepalive_interval=25\n"),
    );
    let t = d.core.poll_transmit(&mut out).expect("an initiation");
    assert_eq!(
        (t.destination, t.len, out[0]),
        (endpoint, INITIATION_LEN, 1)
    );
    let p = &snap(&dev).peers[0];
    assert_eq!(
        (p.persistent_keepalive, p.tx_bytes),
        (25, INITIATION_LEN as u64)
    );
    // Off again: reported, and nothing more is sent.
    set(
        &dev,
        &format!("public_key={K2}\npersistent_keepalive_interval=0\n"),
    );
    assert_eq!(snap(&dev).peers[0].persistent_keepalive, 0);
    assert!(d.core.poll_transmit(&mut out).is_none());
}

#[test]
fn allowed_ip_moves_in_the_routing_table() {
    let dev = driver_config();
    let d = driver(&dev);
    let ep1: SocketAddr = "192.0.2.1:1".parse().expect("addr");
    let ep2: SocketAddr = "192.0.2.2:2".parse().expect("addr");
    set(
        &dev,
        &format!(
            "private_key={K3}\npublic_key={K1}\nendpoint={ep1}\nallowed_ip=10.0.0.0/8\n\
             public_key={K2}\nendpoint={ep2}\n"
        ),
    );
    assert_eq!(route(&d, [10, 1, 2, 3]), Ok(ep1));
    set(&dev, &format!("public_key={K2}\nallowed_ip=10.0.0.0/8\n"));
    assert_eq!(route(&d, [10, 1, 2, 3]), Ok(ep2));
    // Removed from its owner: no route at all.
    set(&dev, &format!("public_key={K2}\nallowed_ip=-10.0.0.0/8\n"));
    assert_eq!(
        route(&d, [10, 1, 2, 3]),
        Err(Sent::Dropped(DropReason::NoRoute))
    );
    // A removed peer's prefixes leave the table with it.
    set(
        &dev,
        &format!("public_key={K2}\nallowed_ip=192.168.0.0/16\n"),
    );
    set(&dev, &format!("public_key={K2}\nremove=true\n"));
    assert_eq!(
        route(&d, [192, 168, 1, 1]),
        Err(Sent::Dropped(DropReason::NoRoute))
    );
}

#[test]
fn get_output_of_a_configured_device_is_exact() {
    let dev = driver_config();
    let port = free_port();
    let body = format!(
        "private_key={}\nlisten_port={port}\n\
         public_key={K1}\npreshared_key={K3}\nendpoint=[2001:db8::1]:51820\n\
         persistent_keepalive_interval=25\nallowed_ip=fd00::1/64\nallowed_ip=10.0.0.77/24\n\
         allowed_ip=10.0.0.0/8\nallowed_ip=0.0.0.0/0\n\
         public_key={K2}\nendpoint=[::ffff:192.0.2.7]:9\nallowed_ip=192.168.1.0/24\n",
        "ff".repeat(32)
    );
    assert_eq!(set(&dev, &body), "errno=0\n\n");
    // Written by hand from UAPI.md and X25519 clamping, not from the code: the key is
    // stored clamped (first byte & 248, last byte & 127 | 64); the keepalive sent one
    // initiation (148 bytes); prefixes are masked and listed IPv4 first, in address order,
    // shorter first; an IPv4-mapped endpoint is reported as IPv4.
    let expected = format!(
        "private_key=f8{}7f\nlisten_port={port}\n\
         public_key={K1}\npreshared_key={K3}\nprotocol_version=1\n\
         endpoint=[2001:db8::1]:51820\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
         tx_bytes=148\nrx_bytes=0\npersistent_keepalive_interval=25\n\
         allowed_ip=0.0.0.0/0\nallowed_ip=10.0.0.0/8\nallowed_ip=10.0.0.0/24\n\
         allowed_ip=fd00::/64\n\
         public_key={K2}\npreshared_key={ZERO}\nprotocol_version=1\n\
         endpoint=192.0.2.7:9\n\
         last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n\
         tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n\
         allowed_ip=192.168.1.0/24\n\
         errno=0\n\n",
        "ff".repeat(30)
    );
    let reply = talk(&dev, "get=1\n\n");
    let (extra, standard): (Vec<&str>, Vec<&str>) = reply
        .split_inclusive('\n')
        .partition(|l| l.starts_with("rwg_"));
    assert_eq!(standard.concat(), expected);
    // rwg's own keys come after the device keys and before the first peer, where wg(8)
    // skips what it does not know; every drop reason once, every name once.
    let device_part = &reply[..reply.find("public_key=").expect("peers")];
    assert!(device_part.starts_with("private_key="));
    assert!(extra.iter().all(|l| device_part.contains(*l)));
    let names: std::collections::BTreeSet<&str> = extra
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    assert_eq!(names.len(), extra.len(), "{extra:?}");
    for reason in DropReason::ALL {
        assert!(names.contains(format!("rwg_dropped_{}", reason.name()).as_str()));
    }
    // They agree with the rest of the reply: two peers, the one initiation the keepalive
    // sent (the 148 bytes of tx_bytes above), no handshake completed, nothing dropped.
    let value = |name: &str| -> u64 {
        extra
            .iter()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("{name} missing: {extra:?}"))
            .trim_end()
            .parse()
            .expect("decimal")
    };
    assert_eq!(value("rwg_peers"), 2);
    assert_eq!(value("rwg_handshake_initiations_sent"), 1);
    assert_eq!(value("rwg_handshakes_completed"), 0);
    assert_eq!(value("rwg_cookie_replies_sent"), 0);
    assert!(extra
        .iter()
        .filter(|l| l.starts_with("rwg_dropped_"))
        .all(|l| l.ends_with("=0\n")));
}

/// A `set` of many peers through the real device: every peer arrives, in order, with exactly
/// its own prefixes and endpoint.
#[test]
fn a_set_of_many_peers_arrives_whole() {
    let n = 2000;
    let dev = driver_config();
    assert_eq!(set(&dev, &setconf_body(n)), "errno=0\n\n");
    let peers = snap(&dev).peers;
    assert_eq!(peers.len(), n);
    for (i, p) in peers.iter().enumerate() {
        assert_eq!(p.public_key, key(&numbered_key(i)));
        let v4 = std::net::Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let v6 = std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, i as u16);
        assert_eq!(
            p.allowed_ips,
            vec![(v4.into(), 32), (v6.into(), 128)],
            "peer {i}"
        );
        assert_eq!(
            p.endpoint,
            Some(SocketAddr::new(
                std::net::Ipv4Addr::new(203, 0, 113, (i % 254 + 1) as u8).into(),
                (1024 + i) as u16
            ))
        );
    }
}

/// Configuration gives the control thread nothing to do unless it queues something, so a `set`
/// of N peers wakes it zero times rather than N (each wake-up was a thread switch and a fight
/// for locks). When a change does give it work — keepalive switched on queues an initiation —
/// the core's waker, which the control loop installs, fires.
#[test]
fn configuration_wakes_the_control_thread_only_for_work() {
    let dev = driver_config();
    let d = driver(&dev);
    let wakes = Arc::new(AtomicUsize::new(0));
    let (count, latch) = (Arc::clone(&wakes), Arc::clone(&d.waker));
    d.core.set_waker(Some(Arc::new(move || {
        count.fetch_add(1, Ordering::SeqCst);
        latch.wake();
    })));
    assert_eq!(set(&dev, &setconf_body(500)), "errno=0\n\n");
    assert_eq!(snap(&dev).peers.len(), 500);
    assert_eq!(wakes.load(Ordering::SeqCst), 0);
    // Nor did the configuration path set the control thread's latch behind the core's back.
    assert!(!d.waker.wait(Some(Instant::now())), "latch set");
    let mut out = vec![0u8; 2048];
    assert!(d.core.poll_transmit(&mut out).is_none());

    let body = format!(
        "public_key={}\npersistent_keepalive_interval=25\n",
        numbered_key(7)
    );
    assert_eq!(set(&dev, &body), "errno=0\n\n");
    assert!(wakes.load(Ordering::SeqCst) >= 1);
    assert!(d.waker.wait(Some(Instant::now())), "latch not set");
    let t = d.core.poll_transmit(&mut out).expect("an initiation");
    assert_eq!(
        (t.destination, t.len, out[0]),
        ("203.0.113.8:1031".parse().expect("addr"), INITIATION_LEN, 1)
    );
}

#[test]
fn rebind_returns_to_the_same_port_once_the_old_readers_let_go() {
    let dev = driver_config();
    let d = driver(&dev);
    let endpoint: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let body = format!("private_key={K1}\npublic_key={K2}\nendpoint={endpoint}\n");
    assert_eq!(set(&dev, &body), "errno=0\n\n");
    let mut out = vec![0u8; 2048];
    assert!(d.core.poll_transmit(&mut out).is_none(), "nothing sent yet");
    let port = d.sockets().port();
    let generation = d.generation.load(Ordering::Acquire);

    // A reader's copy of the old IPv4 socket keeps the port bound until the reader lets go.
    let reader_copy = d.sockets().v4().expect("IPv4").try_clone().expect("dup");
    let rebinder = std::thread::spawn({
        let d = Arc::clone(&d);
        move || d.rebind_sockets()
    });
    let started = Instant::now();
    while d.sockets().port() == port {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "no stand-in sockets"
        );
        std::thread::yield_now();
    }
    assert!(port_held(port), "the reader's copy holds the old port");
    drop(reader_copy);
    rebinder.join().expect("no panic").expect("rebound");

    assert_eq!(d.sockets().port(), port);
    assert_eq!(snap(&dev).listen_port, port);
    assert_eq!(d.generation.load(Ordering::Acquire), generation + 2);
    let t = d.core.poll_transmit(&mut out).expect("an initiation");
    assert_eq!(
        (t.destination, t.len, out[0]),
        (endpoint, INITIATION_LEN, 1)
    );
}

/// `ip link set mtu` on a running device reaches the core through link events, well before the
/// slow poll (`MTU_REFRESH`) would have. The interface carries no traffic and is deleted after.
#[test]
#[ignore = "needs root and /dev/net/tun: run with cargo test -- --ignored as root"]
fn mtu_changes_reach_the_core_at_once() {
    let name = format!("rwgm{}", std::process::id() % 100_000);
    let tun = Arc::new(crate::tun::Tun::create(&name).expect("create tun (root?)"));
    struct Del(String);
    impl Drop for Del {
        fn drop(&mut self) {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", &self.0])
                .status();
        }
    }
    let _del = Del(name.clone());
    let d = Driver::new(0).expect("bind UDP sockets");
    let (shutdown, _rx) = crate::ShutdownHandle::channel();
    d.start(Arc::clone(&tun), shutdown).expect("start");
    let set_mtu = |mtu: u32| {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", "dev", &name, "mtu", &mtu.to_string()])
            .status()
            .expect("run ip")
            .success();
        assert!(ok, "ip link set mtu {mtu}");
    };
    // Well under MTU_REFRESH: only the link events can make it in time.
    let patience = super::MTU_REFRESH / 3;
    for mtu in [1280, 1420, 9000, 1280] {
        set_mtu(mtu);
        let deadline = Instant::now() + patience;
        while d.core.mtu() != mtu as usize {
            assert!(
                Instant::now() < deadline,
                "MTU {mtu} not seen after {patience:?}: core has {}",
                d.core.mtu()
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
    d.request_stop();
}

/// The daemon's device, with the real core behind it, keeps no copy of the keys a
/// configuration connection carries in freed heap memory either.
#[test]
fn keys_leave_no_copies_in_freed_memory() {
    crate::uapi::tests::keys_leave_no_copies_in_freed_memory(DriverConfig(
        Driver::new(0).expect("bind UDP sockets"),
    ));
}
