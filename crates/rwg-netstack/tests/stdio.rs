//! The stdio splice: a pair of in-memory pipes standing in for stdin and stdout, joined to a
//! connection to the second stack.

mod common;

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use common::{pair, B4};
use rwg_netstack::stdio::{splice, Spliced};
use rwg_netstack::{TcpListener, TcpStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn end_of_input_reaches_the_server_and_its_answer_ends_the_output() {
    let (a, b) = pair();
    // The server reads everything, then answers with what it got and closes.
    let listener = TcpListener::bind(&b, 22).expect("bind");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.expect("read");
        let answer = format!("got {} bytes: {}", got.len(), String::from_utf8_lossy(&got));
        s.write_all(answer.as_bytes()).await.expect("write");
        s.shutdown().await.expect("shutdown");
    });
    let (mut stdin, input) = tokio::io::duplex(1024);
    let (output, mut stdout) = tokio::io::duplex(1024);
    let stream = TcpStream::connect(&a, SocketAddr::new(B4, 22))
        .await
        .expect("connect");
    let spliced = tokio::spawn(splice(stream, input, output));
    timeout(LIMIT, async {
        stdin.write_all(b"SSH-2.0-test\r\n").await.expect("write");
        drop(stdin); // End of input.
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).await.expect("output ends");
        assert_eq!(out, b"got 14 bytes: SSH-2.0-test\r\n");
        let counts = spliced.await.expect("task").expect("splice");
        assert_eq!(
            counts,
            Spliced {
                sent: 14,
                received: 28
            }
        );
    })
    .await
    .expect("in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_ends_both_directions_with_the_error() {
    let (a, b) = pair();
    // The server reads one byte of two and drops the connection: the unread byte makes it a
    // reset.
    let listener = TcpListener::bind(&b, 22).expect("bind");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut one = [0u8; 1];
        s.read_exact(&mut one).await.expect("read");
        drop(s);
    });
    // Input stays open: only the reset can end the splice.
    let (mut stdin, input) = tokio::io::duplex(1024);
    let (output, _stdout) = tokio::io::duplex(1024);
    let stream = TcpStream::connect(&a, SocketAddr::new(B4, 22))
        .await
        .expect("connect");
    let spliced = tokio::spawn(splice(stream, input, output));
    stdin.write_all(b"xy").await.expect("write");
    let result = timeout(LIMIT, spliced)
        .await
        .expect("in time")
        .expect("task");
    assert_eq!(
        result.map_err(|e| e.kind()),
        Err(io::ErrorKind::ConnectionReset)
    );
}
