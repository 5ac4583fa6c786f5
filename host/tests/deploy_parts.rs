//! Deploys larger than one stream message (RabbitMQ 4 refuses messages over
//! 16 MiB by default): split into parts under one signature, joined by
//! every host, late ones included; a missing or damaged part refuses the
//! deploy with the reason.

use std::time::Duration;

use lapin::types::FieldTable;
use warren_client::protocol::deploy::{
    DEPLOY_PART_BYTES, HEADER_DEPLOY_PART, HEADER_DEPLOY_PARTS_ID, encode_module, new_sequence,
    public_key_path,
};
use warren_client::protocol::{header_text, set_header_text};
use warren_client::{Call, Deploy, SecretKey};
use warren_testing::*;

/// A module of about 18 MB (a componentize-py procedure's size) that does
/// not compress: fib with a large custom section of noise.
fn large_fib() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..18 << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    with_custom_section_bytes(&fib_wasm(), &noise)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_module_is_deployed_in_parts_and_late_hosts_join_them() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let module = large_fib();
    let first =
        TestHost::start_with("parts", &[], trusting(public_key_path(&secret), "first")).await;
    let answer = only_answer(
        deploy(
            &first.queue,
            Deploy::new("fib", module.clone()).signed_by(key),
        )
        .await,
    );
    assert!(answer.accepted, "{answer:?}");
    assert_eq!(first.serving("fib"), Some(digest(&module)));

    let parts: Vec<String> = read_deploy_stream(&first.queue)
        .await
        .iter()
        .filter_map(|message| header_text(Some(&message.headers), HEADER_DEPLOY_PART))
        .collect();
    let count = encode_module(&module).0.len().div_ceil(DEPLOY_PART_BYTES);
    assert!(count >= 5, "{count} parts");
    assert_eq!(parts.len(), count, "{parts:?}");
    assert_eq!(parts.last().unwrap(), &format!("{count}/{count}"));

    // A host started afterwards joins the parts from the stream's history.
    let late = TestHost::join(
        &first.queue,
        &[],
        trusting(public_key_path(&secret), "late"),
    )
    .await;
    assert_eq!(late.serving("fib"), Some(digest(&module)));
    let client = late.client().await;
    assert_eq!(client.call(call("10")).await.unwrap().body, b"55");
    client.close().await;
    late.stop().await;
    first.stop().await;
}

/// The parts `module` would be published as, signed by `signer`.
fn parts_of(module: &[u8], signer: &SecretKey) -> Vec<(FieldTable, Vec<u8>)> {
    let sequence = new_sequence();
    let signature = signer.sign("fib", &digest(module), sequence, None);
    let chunks: Vec<&[u8]> = module.chunks(DEPLOY_PART_BYTES).collect();
    let count = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut headers = deploy_headers("fib", module, sequence, signer, &signature);
            set_header_text(
                &mut headers,
                HEADER_DEPLOY_PART,
                &format!("{}/{count}", i + 1),
            );
            set_header_text(&mut headers, HEADER_DEPLOY_PARTS_ID, "by-hand");
            (headers, chunk.to_vec())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_with_a_missing_or_damaged_part_is_refused_saying_why() {
    let keys = tempfile::tempdir().unwrap();
    let (secret, key) = key_in(keys.path(), "ops");
    let fib = fib_wasm();
    let host = TestHost::start_with(
        "parts-broken",
        &[("fib", &fib)],
        trusting(public_key_path(&secret), "host"),
    )
    .await;
    let module = with_custom_section(&fib, &"y".repeat(3 * DEPLOY_PART_BYTES));

    let mut missing = parts_of(&module, &key);
    missing.remove(1);
    let answer = only_answer(answers_to_raw_messages(&host.queue, missing).await);
    assert!(!answer.accepted);
    assert!(
        answer.reason.contains("part 2 of them did not arrive"),
        "{}",
        answer.reason
    );

    let mut damaged = parts_of(&module, &key);
    damaged[2].1[100] ^= 1;
    let answer = only_answer(answers_to_raw_messages(&host.queue, damaged).await);
    assert!(!answer.accepted);
    assert!(answer.reason.contains("digest"), "{}", answer.reason);
    assert_eq!(host.serving("fib"), Some(digest(&fib)), "nothing changed");

    // The same parts, whole and in order, are accepted.
    let answer = only_answer(answers_to_raw_messages(&host.queue, parts_of(&module, &key)).await);
    assert!(answer.accepted, "{answer:?}");
    host.stop().await;
}

/// The 18 MB Python fib, deployed from the client: too large for one
/// message on a RabbitMQ 4 broker left at its defaults.
#[tokio::test(flavor = "multi_thread")]
async fn the_python_fib_deploys_and_serves() {
    let path = workspace().join("target/guests/fib-py.wasm");
    let Ok(module) = std::fs::read(&path) else {
        eprintln!(
            "SKIPPED: {} is not built (just build-guests)",
            path.display()
        );
        return;
    };
    assert!(module.len() > DEPLOY_PART_BYTES, "{} bytes", module.len());
    let host = TestHost::start_with("parts-python", &[], |config| {
        config.deploys.allow_unsigned_deploys = true;
    })
    .await;
    let client = host.client().await;
    let report = client
        .deploy(Deploy::new("fib-py", module).timeout(Duration::from_secs(300)))
        .await
        .unwrap();
    let answer = only_answer(report.answers);
    assert!(answer.accepted, "{answer:?}");
    let reply = client
        .call(
            Call::new("20")
                .procedure("fib-py")
                .timeout(Duration::from_secs(120)),
        )
        .await
        .unwrap();
    assert_eq!(reply.body, b"6765");
    client.close().await;
    host.stop().await;
}
