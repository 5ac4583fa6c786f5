//! Calls as tests make them: the test timeout, retries until an answer is
//! right, error kinds, and steady load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use warren_client::{Call, CallError, Reply, RpcClient};

use crate::fixtures::fib;

/// Calls until `accept` likes the reply or `within` passes; returns the last.
pub async fn call_until(
    client: &RpcClient,
    call: Call,
    within: Duration,
    accept: impl Fn(&Result<Reply, CallError>) -> bool,
) -> Result<Reply, CallError> {
    let give_up = Instant::now() + within;
    loop {
        let outcome = client.call(call.clone()).await;
        if accept(&outcome) || Instant::now() >= give_up {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The error kind of a failed call, or a panic saying what came instead.
pub fn error_kind(outcome: Result<Reply, CallError>) -> warren_client::protocol::ErrorKind {
    match outcome {
        Err(CallError::Rpc { error, .. }) => error.kind,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Short timeout for calls in tests that expect an answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// A call with the test timeout.
pub fn call(body: impl Into<Vec<u8>>) -> Call {
    Call::new(body).timeout(CALL_TIMEOUT)
}

/// Shares a client between tasks.
pub type SharedClient = Arc<RpcClient>;

/// Keeps `callers` tasks calling fib(n) for n cycling through 1..=20 until
/// `stop` is set; each returns how many calls it made, or panics on the
/// first failed or wrong one (naming it).
pub fn keep_calling(
    client: SharedClient,
    callers: usize,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..callers)
        .map(|caller| {
            let (client, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                let mut made = 0;
                let mut n = caller as u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    n = n % 20 + 1;
                    let reply = client
                        .call(Call::new(n.to_string()).timeout(Duration::from_secs(30)))
                        .await
                        .unwrap_or_else(|e| panic!("caller {caller}: fib({n}) failed: {e}"));
                    assert_eq!(
                        String::from_utf8(reply.body).unwrap(),
                        fib(n).to_string(),
                        "caller {caller}: fib({n})"
                    );
                    made += 1;
                }
                made
            })
        })
        .collect()
}
