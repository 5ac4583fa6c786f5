//! Deploys as tests make them: keys, hosts that trust them, deploys
//! through the library and by hand (what a deployer that skips the
//! client's checks, or a forger, could publish).

use std::path::{Path, PathBuf};

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::FieldTable;
use warren_client::protocol::deploy::{
    DeployAnswer, HEADER_DEPLOY_DIGEST, HEADER_DEPLOY_KEY, HEADER_DEPLOY_NAME,
    HEADER_DEPLOY_SEQUENCE, HEADER_DEPLOY_SIGNATURE, deploy_stream,
};
use warren_client::protocol::set_header_text;
use warren_client::{Deploy, RpcClient, SecretKey};
use warren_host::HostConfig;

use crate::broker::{amqp_url, close_connection, reply_queue};
use crate::calls::CALL_TIMEOUT;
use crate::fixtures::digest;

/// A fresh key pair in `dir`; returns (secret key path, the key).
pub fn key_in(dir: &Path, name: &str) -> (PathBuf, SecretKey) {
    let path = dir.join(name);
    let key = SecretKey::generate().unwrap();
    key.write_pair(&path).unwrap();
    (path, key)
}

/// Options for a host that trusts the keys in `public_key_file` and
/// answers deploys as `host_id`.
pub fn trusting(public_key_file: PathBuf, host_id: &'static str) -> impl FnOnce(&mut HostConfig) {
    move |config| {
        config.deploys.trusted_keys = Some(public_key_file);
        config.deploys.host_id = Some(host_id.into());
    }
}

/// Deploys with the library and returns the hosts' answers.
pub async fn deploy(queue: &str, deploy: Deploy) -> Vec<DeployAnswer> {
    let client = RpcClient::connect(&amqp_url(), queue).await.unwrap();
    let report = client.deploy(deploy.timeout(CALL_TIMEOUT)).await.unwrap();
    client.close().await;
    report.answers
}

/// The headers of a deploy of `module` as `name` with `sequence`, carrying
/// `signer`'s key and `signature`: what `warren deploy` sends, or a forgery.
pub fn deploy_headers(
    name: &str,
    module: &[u8],
    sequence: u64,
    signer: &SecretKey,
    signature: &str,
) -> FieldTable {
    let mut headers = FieldTable::default();
    set_header_text(&mut headers, HEADER_DEPLOY_NAME, name);
    set_header_text(&mut headers, HEADER_DEPLOY_DIGEST, &digest(module));
    set_header_text(&mut headers, HEADER_DEPLOY_SEQUENCE, &sequence.to_string());
    set_header_text(
        &mut headers,
        HEADER_DEPLOY_KEY,
        &signer.public_key().to_string(),
    );
    set_header_text(&mut headers, HEADER_DEPLOY_SIGNATURE, signature);
    headers
}

/// Publishes a deploy message by hand (what a deployer that skips the
/// client's checks could send) and returns the hosts' answers to it.
pub async fn answers_to_raw_deploy(
    queue: &str,
    headers: FieldTable,
    module: &[u8],
) -> Vec<DeployAnswer> {
    answers_to_raw_messages(queue, vec![(headers, module.to_vec())]).await
}

/// Publishes deploy messages by hand, one after the other (the parts of a
/// deploy, say), and returns the first answer a host sends.
pub async fn answers_to_raw_messages(
    queue: &str,
    messages: Vec<(FieldTable, Vec<u8>)>,
) -> Vec<DeployAnswer> {
    answers_to_raw_messages_from(queue, messages, 1).await
}

/// [`answers_to_raw_messages`], waiting for `hosts` answers.
pub async fn answers_to_raw_messages_from(
    queue: &str,
    messages: Vec<(FieldTable, Vec<u8>)>,
    hosts: usize,
) -> Vec<DeployAnswer> {
    use futures_lite::StreamExt as _;
    let (connection, replies, mut consumer) = reply_queue(&amqp_url()).await;
    let channel = connection.create_channel().await.unwrap();
    for (headers, body) in messages {
        channel
            .basic_publish(
                "".into(),
                deploy_stream(queue).as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_headers(headers)
                    .with_user_id(crate::amqp_user_id())
                    .with_reply_to(replies.clone()),
            )
            .await
            .unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < hosts {
        let delivery = tokio::time::timeout(CALL_TIMEOUT, consumer.next())
            .await
            .expect("every host answered")
            .unwrap()
            .unwrap();
        answers.push(serde_json::from_slice(&delivery.data).unwrap());
    }
    close_connection(&connection).await;
    answers
}

/// The one answer there must be.
pub fn only_answer(answers: Vec<DeployAnswer>) -> DeployAnswer {
    assert_eq!(answers.len(), 1, "{answers:?}");
    answers.into_iter().next().unwrap()
}
