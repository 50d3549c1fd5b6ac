//! The parsers of `rwg proxy --http` (rwg-netstack's `http`, through its `fuzzing` module):
//! what a client sends before the proxy connects anywhere, and the response head a server
//! sends back. The input is the bytes of a connection. Checked:
//! - `head_end` agrees with a model (the end of the first line that is empty but for its
//!   line end, `\n` or `\r\n`);
//! - a head `parse_request` accepts has a token for a method, a non-empty target without
//!   spaces, `HTTP/1.0` or `HTTP/1.1`, header names that are tokens and trimmed values
//!   without control characters; written back in canonical form it parses to the same
//!   request;
//! - what `split_absolute` takes from the target is really in it: the authority right
//!   after `scheme://` with none of `/?#`, then the path up to a fragment (or `/` if none);
//! - `base64_decode` (the proxy's, for `Proxy-Authorization`) inverts rwg-driver's encoder
//!   (the one that prints keys as `wg` does), for any bytes;
//! - `rewrite_response_head` keeps the status line, drops every hop-by-hop header but
//!   `Upgrade`, ends with `Connection: close` and a blank line, and rewriting its own output
//!   changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rwg_driver::metrics::base64;
use rwg_netstack::http::fuzzing::{
    base64_decode, head_end, parse_request, rewrite_response_head, split_absolute,
};

fn model_head_end(buf: &[u8]) -> Option<usize> {
    let mut end = 0;
    for line in buf.split_inclusive(|&b| b == b'\n') {
        end += line.len();
        if line == b"\n" || line == b"\r\n" {
            return Some(end);
        }
    }
    None
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
];

fn check_request(head: &[u8]) {
    let Ok(r) = parse_request(head) else {
        return;
    };
    assert!(is_token(&r.method), "method {:?}", r.method);
    assert!(
        !r.target.is_empty() && !r.target.contains(' '),
        "target {:?}",
        r.target
    );
    assert!(
        r.version == "HTTP/1.0" || r.version == "HTTP/1.1",
        "version {:?}",
        r.version
    );
    for (name, value) in &r.headers {
        assert!(is_token(name), "header name {name:?}");
        assert_eq!(value.trim(), value, "value not trimmed");
        assert!(
            !value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f),
            "control character in {value:?}"
        );
    }
    let mut again = format!("{} {} {}\r\n", r.method, r.target, r.version);
    for (name, value) in &r.headers {
        again.push_str(&format!("{name}: {value}\r\n"));
    }
    again.push_str("\r\n");
    assert_eq!(
        parse_request(again.as_bytes()).as_ref(),
        Ok(&r),
        "the request written back parses differently: {again:?}"
    );
    if let Ok((authority, path)) = split_absolute(&r.target) {
        let (scheme, rest) = r.target.split_once("://").expect("an absolute URI");
        assert!(scheme.eq_ignore_ascii_case("http"));
        assert!(
            rest.starts_with(authority),
            "authority {authority:?} of {rest:?}"
        );
        assert!(
            !authority.contains(['/', '?', '#']),
            "authority {authority:?}"
        );
        let after = &rest[authority.len()..];
        let before_fragment = after.split('#').next().unwrap_or_default();
        if before_fragment.is_empty() {
            assert_eq!(path, "/");
        } else {
            assert_eq!(path, before_fragment);
        }
    }
}

fn check_response(head: &[u8]) {
    let Some(out) = rewrite_response_head(head) else {
        return;
    };
    let text = std::str::from_utf8(head).expect("a rewritten head was UTF-8");
    let status_line = text.split('\n').next().unwrap_or_default();
    let status_line = status_line.strip_suffix('\r').unwrap_or(status_line);
    assert!(out.starts_with(&format!("{status_line}\r\n")), "{out:?}");
    assert!(out.ends_with("\r\nConnection: close\r\n\r\n"), "{out:?}");
    for line in out.split("\r\n").skip(1) {
        if line.is_empty() || line == "Connection: close" {
            continue;
        }
        let name = line.split_once(':').map(|(n, _)| n).unwrap_or(line);
        assert!(
            !HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)),
            "hop-by-hop header {name:?} forwarded: {out:?}"
        );
    }
    // A header named `close` survives the first pass but not the second, whose `Connection:
    // close` names it as hop-by-hop; harmless (and what a later proxy would do with it).
    let names_close = out.split("\r\n").any(|l| {
        l.split_once(':')
            .is_some_and(|(n, _)| n.eq_ignore_ascii_case("close"))
    });
    if !names_close {
        assert_eq!(
            rewrite_response_head(out.as_bytes()).as_deref(),
            Some(out.as_str()),
            "rewriting the rewritten head changed it"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let end = head_end(data);
    assert_eq!(
        end,
        model_head_end(data),
        "head_end disagrees with the model"
    );
    let head = &data[..end.unwrap_or(data.len())];
    check_request(head);
    check_response(head);
    let decoded = base64_decode(&base64(data));
    assert_eq!(decoded.as_deref(), Some(data), "base64 round trip");
    if let Ok(text) = std::str::from_utf8(data) {
        // Any text: no panic, and what decodes is at most 3/4 of the length.
        if let Some(bytes) = base64_decode(text) {
            assert!(bytes.len() <= text.len() * 3 / 4 + 1);
        }
    }
});
