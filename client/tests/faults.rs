//! Faults a host must ride out, against the real broker.

mod common;

use std::time::Duration;

use common::*;
use tokio::net::{TcpListener, TcpStream};

/// The broker's address, from the test URL (host:port).
fn broker_address() -> String {
    let url = amqp_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5672")
    }
}

/// A TCP proxy to the broker on `port`, opened only after `delay`: to the
/// host, a broker that comes up late.
fn late_broker(port: u16, delay: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(broker_address()).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    })
}

/// A host started before its broker waits for it (it used to exit 1 at
/// once, which under systemd or compose start order is a crash loop).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_started_before_the_broker_waits_for_it_and_serves() {
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let proxy = late_broker(port, Duration::from_secs(2));
    let late_url = amqp_url().replacen(&broker_address(), &format!("127.0.0.1:{port}"), 1);
    assert_ne!(late_url, amqp_url(), "the test URL names host:port");
    let host = TestHost::start_with("late-broker", &[("fib", &fib_wasm())], |config| {
        config.amqp_urls = vec![late_url];
    })
    .await;
    let reply = host.client().await.call(call("12")).await.unwrap();
    assert_eq!(reply.body, b"144");
    host.stop().await;
    proxy.abort();
}
