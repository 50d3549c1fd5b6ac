//! The configuration protocol: `rwg_device::uapi::UapiSession` fed the input as lines (split at
//! `\n`, invalid UTF-8 replaced as the socket server does), applied to the in-memory
//! `MemoryDevice` the UAPI tests use (`get` and `set` semantics are all in the session; the
//! device stores what it is told). Checked:
//! - nothing panics; every reply is `errno=0` or `errno=-N` with N = EINVAL or EPROTO (the
//!   memory device itself never fails), then an empty line; a `get` reports the device's state;
//!   an unknown operation closes the connection (the rest of the input is not read);
//! - a `set` is applied line by line up to its first bad line and not after it: the state after
//!   a failed request equals the state after the same request cut just before the line that
//!   failed (found by replaying shorter requests from scratch), and that shorter one succeeds;
//! - what `get` reports can be `set` again: the reply (without the read-only counters) sent as
//!   a `set` with `replace_peers` to a fresh device succeeds and reproduces the same `get`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwg_device::memory::MemoryDevice;
use rwg_device::uapi::{format_get, Response, UapiDevice, UapiSession};

/// Lines a request may have for the cut-short replays (quadratic in it).
const MAX_REPLAYED_REQUEST: usize = 24;

fuzz_target!(|data: &[u8]| {
    let lines: Vec<String> = data
        .split(|&b| b == b'\n')
        .take(256)
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    let mut device = MemoryDevice::new();
    let mut session = UapiSession::new();
    let mut request_start = 0;
    for (i, line) in lines.iter().enumerate() {
        if !session.in_request() {
            request_start = i;
        }
        let set = lines[request_start] == "set=1";
        match session.handle_line(line, &mut device) {
            Response::Continue => {}
            Response::Reply(reply) => {
                let errno = parse_reply(&reply);
                if set && errno != 0 && i - request_start <= MAX_REPLAYED_REQUEST {
                    check_failed_request(&lines, request_start, i, &device);
                }
            }
            Response::Get(snapshot) => {
                assert!(snapshot == device.snapshot(), "get reported another state");
            }
            Response::Close => {
                assert!(
                    request_start == i && line != "get=1" && line != "set=1",
                    "closed in the middle of a request"
                );
                break;
            }
        }
    }
    check_get_round_trip(&device);
});

/// `errno=N\n\n` → N, checking the form.
fn parse_reply(reply: &str) -> i32 {
    let n = reply
        .strip_prefix("errno=")
        .and_then(|r| r.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("malformed reply {reply:?}"));
    let errno: i32 = n
        .parse()
        .unwrap_or_else(|_| panic!("malformed errno {n:?}"));
    assert!(
        matches!(errno, 0 | -22 | -71),
        "errno {errno}: the memory device never fails, only lines can be bad"
    );
    errno
}

/// The `get` text of a fresh device after `lines` (the last request terminated by `""`), and
/// the errno of that request's reply.
fn replay(lines: &[String], request_start: usize) -> (String, i32) {
    let mut device = MemoryDevice::new();
    let mut session = UapiSession::new();
    let mut errno = None;
    for (i, line) in lines.iter().map(String::as_str).chain([""]).enumerate() {
        let r = session.handle_line(line, &mut device);
        if i >= request_start {
            if let Response::Reply(reply) = r {
                errno = Some(parse_reply(&reply));
            }
        }
    }
    let errno = errno.expect("the request got a reply");
    (format_get(&device.snapshot()).as_str().to_owned(), errno)
}

/// A `set` from `start` (the `set=1` line) to `end` (its empty line) failed: find the line that
/// failed by replaying the request cut ever shorter, and check that it and everything after it
/// changed nothing.
fn check_failed_request(lines: &[String], start: usize, end: usize, device: &MemoryDevice) {
    let now = format_get(&device.snapshot()).as_str().to_owned();
    // Cut after line `start + k` (k lines of the request body); the full body failed.
    let mut failing = None;
    for k in 0..end - start {
        let (_, errno) = replay(&lines[..start + 1 + k], start);
        if errno != 0 {
            failing = Some(k);
            break;
        }
    }
    let k = failing.expect("a cut-short request failed where the whole one did");
    assert!(k >= 1, "an empty request failed");
    let (before, errno) = replay(&lines[..start + k], start);
    assert_eq!(errno, 0);
    assert_eq!(
        before,
        now,
        "the failed line {:?} or a line after it changed the device",
        lines[start + k]
    );
}

/// Keys of a `get` reply that `set` does not take.
fn read_only(key: &str) -> bool {
    matches!(
        key,
        "last_handshake_time_sec" | "last_handshake_time_nsec" | "tx_bytes" | "rx_bytes"
    ) || key.starts_with("rwg_")
}

fn check_get_round_trip(device: &MemoryDevice) {
    let text = format_get(&device.snapshot()).as_str().to_owned();
    let mut copy = MemoryDevice::new();
    let mut session = UapiSession::new();
    let mut request = vec!["set=1".to_owned(), "replace_peers=true".to_owned()];
    request.extend(
        text.lines()
            .filter(|l| !read_only(l.split_once('=').map_or(*l, |(k, _)| k)))
            .map(str::to_owned),
    );
    request.push(String::new());
    let mut reply = None;
    for line in &request {
        if let Response::Reply(r) = session.handle_line(line, &mut copy) {
            reply = Some(r);
        }
    }
    assert_eq!(
        reply.as_deref(),
        Some("errno=0\n\n"),
        "the device's own get reply was refused as a set: {request:?}"
    );
    let again = format_get(&copy.snapshot()).as_str().to_owned();
    assert_eq!(again, text, "get → set → get changed the configuration");
}
