//! `rwg demo` end to end: two peers in one process, a real handshake and a checksummed TCP
//! transfer over loopback. Needs no root.

use std::process::Command;

#[test]
fn demo_moves_data_and_reports_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_rwg"))
        .args(["demo", "--bytes", "1048576"])
        .output()
        .expect("run rwg demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "rwg demo failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert_eq!(stdout.matches("public key ").count(), 2, "{stdout}");
    assert_eq!(stdout.matches("udp 127.0.0.1:").count(), 2, "{stdout}");
    assert!(stdout.contains("handshake completed in "), "{stdout}");
    assert!(stdout.contains("1048576 bytes in "), "{stdout}");
    assert!(stdout.contains("MiB/s"), "{stdout}");
    assert!(stdout.contains("Mbit/s"), "{stdout}");
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(stdout.contains("handshakes 1"), "{stdout}");
    assert!(stdout.trim_end().ends_with("OK"), "{stdout}");
}

#[test]
fn demo_rejects_bad_flags() {
    // Each bad command line: exit status 2 and a message that names the problem and the fix.
    for (args, wants) in [
        (
            &["demo", "--bytes", "lots"][..],
            &["'lots'", "--bytes", "examples: 1048576, 512K, 64M, 1G"][..],
        ),
        (
            &["demo", "--bytes", "0"],
            &["--bytes", "not a positive size"],
        ),
        (
            &["demo", "--frobnicate"],
            &["unexpected argument '--frobnicate'", "Usage: rwg demo"],
        ),
        (&["demo", "--bytes"], &["--bytes", "a value is required"]),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_rwg"))
            .args(args)
            .output()
            .expect("run rwg demo");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}: nothing on stdout");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        for want in wants {
            assert!(stderr.contains(want), "{args:?}: want {want:?} in {stderr}");
        }
    }
}

#[test]
fn proxy_reports_bad_input() {
    let dir = std::env::temp_dir().join(format!("rwg-proxy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let conf = dir.join("broken.conf");
    std::fs::write(
        &conf,
        "[Interface]\nPrivateKey = not-a-key\nAddress = 10.0.0.2/32\n",
    )
    .expect("write");
    let conf = conf.to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_rwg"))
            .arg("proxy")
            .args(args)
            .output()
            .expect("run rwg proxy");
        assert!(!output.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let stderr = run(&["--config", &conf, "--socks5", "127.0.0.1:0"]);
    assert!(stderr.contains("broken.conf:2:"), "{stderr}");
    let stderr = run(&["--config", &conf]);
    assert!(stderr.contains("at least one of --socks5"), "{stderr}");
    let stderr = run(&["--config", &conf, "--forward", "tcp:1.2.3.4"]);
    assert!(stderr.contains("--forward"), "{stderr}");
    let stderr = run(&["--config", &conf, "--socks5", "localhost"]);
    assert!(stderr.contains("127.0.0.1:1080"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
