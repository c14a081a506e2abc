//! `latency-proxy LISTEN_PORT TARGET_PORT DELAY_MS`: a TCP proxy on 127.0.0.1 that holds every
//! chunk a client sends for DELAY_MS before passing it on (so each HTTP request arrives that much
//! later, with requests on one connection still pipelined) and relays responses undelayed.
//!
//! The benches give Cairn and restic the same per-request latency to a local S3 server with it.
//! It replaced `latency_proxy.py`, whose relaying of every response byte through Python took CPU
//! from the two cores the server and the client share. One thread, so it takes at most one core.

use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

fn arg(i: usize, what: &str) -> u64 {
    std::env::args()
        .nth(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| {
            eprintln!(
                "usage: latency-proxy LISTEN_PORT TARGET_PORT DELAY_MS ({what} missing or not a number)"
            );
            std::process::exit(2)
        })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> io::Result<()> {
    let listen = u16::try_from(arg(1, "LISTEN_PORT")).unwrap_or(0);
    let target = u16::try_from(arg(2, "TARGET_PORT")).unwrap_or(0);
    let delay = Duration::from_millis(arg(3, "DELAY_MS"));
    let listener = TcpListener::bind(("127.0.0.1", listen)).await?;
    println!("ready");
    loop {
        let (client, _) = listener.accept().await?;
        tokio::spawn(async move {
            let _ = relay(client, target, delay).await;
        });
    }
}

async fn relay(client: TcpStream, target: u16, delay: Duration) -> io::Result<()> {
    let server = TcpStream::connect(("127.0.0.1", target)).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut client_r, mut client_w) = client.into_split();
    let (server_r, mut server_w) = server.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = client_r.read(&mut buf).await?;
            let _ = tx.send((Instant::now() + delay, buf[..n].to_vec()));
            if n == 0 {
                return Ok::<_, io::Error>(());
            }
        }
    };
    let forward = async move {
        while let Some((due, data)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if data.is_empty() {
                break;
            }
            server_w.write_all(&data).await?;
        }
        server_w.shutdown().await
    };
    let back = async move {
        let mut server_r = BufReader::with_capacity(1 << 20, server_r);
        tokio::io::copy_buf(&mut server_r, &mut client_w).await?;
        client_w.shutdown().await
    };
    let _ = tokio::join!(read, forward, back);
    Ok(())
}
