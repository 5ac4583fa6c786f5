//! Deploys larger than one stream message: a module split into parts.
//!
//! RabbitMQ 4 refuses messages over 16 MiB by default (`max_message_size`),
//! and a componentize-py procedure is about 18 MB, so a module larger than
//! [`DEPLOY_PART_BYTES`] is published as consecutive messages of at most
//! that many bytes, each with every header of the deploy (name, digest,
//! sequence, key, signature, `reply_to`) plus [`HEADER_DEPLOY_PART`]
//! (`"i/n"`, from 1) and [`HEADER_DEPLOY_PARTS_ID`] (one random id per
//! publication, so two copies published at once cannot be mixed up). The
//! signature covers the digest of the whole module, so the parts need no
//! signature of their own: a host joins them in order and checks the whole
//! as it checks a one-message deploy; a damaged part fails the digest, a
//! missing one is seen as a gap in the numbering. A module that fits in one
//! part goes as one message without these headers, as before parts existed.
//!
//! A module over [`COMPRESS_FROM_BYTES`] is deflated first (content
//! encoding [`DEPLOY_ENCODING`]) and the compressed bytes are split: Python
//! and JavaScript procedures shrink to about a third, so the stream holds
//! three times as many of them, at ~0.4 s of one core per deploy and ~0.1 s
//! per host (BENCHMARKS.md). Digest and signature are over the module
//! itself, so they are checked after inflating, which [`decode_module`]
//! stops at the host's size limit.

use lapin::options::BasicPublishOptions;
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

/// Deploy header of a module split into parts: `"i/n"`, part `i` of `n`,
/// counted from 1.
pub const HEADER_DEPLOY_PART: &str = "x-deploy-part";
/// Deploy header of a module split into parts: the id all parts of one
/// publication share.
pub const HEADER_DEPLOY_PARTS_ID: &str = "x-deploy-parts-id";
/// The most module bytes in one stream message: well under RabbitMQ 4's
/// default largest message (16 MiB) and the deploy stream's segments.
pub const DEPLOY_PART_BYTES: usize = 4 << 20;

/// The content encoding of a deflated deploy (zlib's raw deflate).
pub const DEPLOY_ENCODING: &str = "deflate";
/// Modules up to this size go as they are: too small for deflating to pay.
pub const COMPRESS_FROM_BYTES: usize = 64 << 10;

/// The body to publish for `module`, and its content encoding (`None` when
/// it goes as it is).
pub fn encode_module(module: &[u8]) -> (std::borrow::Cow<'_, [u8]>, Option<&'static str>) {
    use std::io::Write as _;
    if module.len() <= COMPRESS_FROM_BYTES {
        return (module.into(), None);
    }
    let mut encoder = flate2::write::DeflateEncoder::new(
        Vec::with_capacity(module.len() / 2),
        flate2::Compression::fast(),
    );
    encoder
        .write_all(module)
        .expect("writing to a Vec cannot fail");
    let deflated = encoder.finish().expect("writing to a Vec cannot fail");
    (deflated.into(), Some(DEPLOY_ENCODING))
}

/// The module a deploy's (joined) body carries, given the message's content
/// encoding; at most `max_bytes` are inflated, so a small body cannot
/// expand into more than the host accepts.
pub fn decode_module(
    encoding: Option<&str>,
    body: Vec<u8>,
    max_bytes: usize,
) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    match encoding {
        None | Some("") | Some("identity") => Ok(body),
        Some(DEPLOY_ENCODING) => {
            let mut module = Vec::with_capacity(body.len().saturating_mul(3).min(max_bytes));
            flate2::read::DeflateDecoder::new(body.as_slice())
                .take(max_bytes as u64 + 1)
                .read_to_end(&mut module)
                .map_err(|error| format!("the deploy's deflated module is damaged: {error}"))?;
            if module.len() > max_bytes {
                return Err(format!(
                    "the module inflates to more than {max_bytes} bytes, the most this host accepts (--max-module-bytes)"
                ));
            }
            Ok(module)
        }
        Some(_) => Err(format!(
            "the deploy's content encoding is not one this host reads (only {DEPLOY_ENCODING:?})"
        )),
    }
}

/// Where one message stands in a deploy split into parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    /// What all parts of the publication share ([`HEADER_DEPLOY_PARTS_ID`]).
    pub id: String,
    /// Which part this is, from 1.
    pub index: u32,
    /// How many parts there are.
    pub count: u32,
}

impl Part {
    /// Reads a message's part headers: `None` for a one-message deploy, an
    /// error naming the header when they are malformed.
    pub fn read(headers: Option<&FieldTable>) -> Option<Result<Part, String>> {
        let text = crate::header_text(headers, HEADER_DEPLOY_PART)?;
        Some(Self::parse(
            &text,
            crate::header_text(headers, HEADER_DEPLOY_PARTS_ID),
        ))
    }

    fn parse(text: &str, id: Option<String>) -> Result<Part, String> {
        let bad = || {
            format!(
                "the deploy's part header ({HEADER_DEPLOY_PART}) is not \"i/n\" with 1 <= i <= n"
            )
        };
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = index.trim().parse().map_err(|_| bad())?;
        let count: u32 = count.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        let id = id.filter(|id| !id.is_empty()).ok_or_else(|| {
            format!("the deploy part {index}/{count} has no {HEADER_DEPLOY_PARTS_ID} header")
        })?;
        Ok(Part { id, index, count })
    }
}

/// Publishes `module` to the deploy stream `stream` with `properties`
/// (the deploy's headers, and `reply_to` when answers are wanted), deflated
/// when larger than [`COMPRESS_FROM_BYTES`], in parts when that is larger
/// than [`DEPLOY_PART_BYTES`], and waits until the broker
/// has stored every message. `Ok(false)` when the broker refused one (a
/// publisher nack): hosts then see an incomplete deploy and refuse it.
pub async fn publish_deploy(
    channel: &Channel,
    stream: &str,
    module: &[u8],
    properties: BasicProperties,
) -> lapin::Result<bool> {
    let (body, encoding) = encode_module(module);
    publish_encoded(channel, stream, &body, encoding, properties).await
}

/// [`publish_deploy`] for a body [`encode_module`] made already (a host
/// encodes off its async runtime).
pub async fn publish_encoded(
    channel: &Channel,
    stream: &str,
    module: &[u8],
    encoding: Option<&str>,
    properties: BasicProperties,
) -> lapin::Result<bool> {
    let properties = match encoding {
        Some(encoding) => properties.with_content_encoding(encoding.into()),
        None => properties,
    };
    let messages: Vec<(&[u8], BasicProperties)> = if module.len() <= DEPLOY_PART_BYTES {
        vec![(module, properties)]
    } else {
        let id = hex::encode(rand::random::<[u8; 16]>());
        let count = module.len().div_ceil(DEPLOY_PART_BYTES);
        module
            .chunks(DEPLOY_PART_BYTES)
            .enumerate()
            .map(|(i, chunk)| {
                let mut headers = properties.headers().clone().unwrap_or_default();
                crate::set_header_text(
                    &mut headers,
                    HEADER_DEPLOY_PART,
                    &format!("{}/{count}", i + 1),
                );
                crate::set_header_text(&mut headers, HEADER_DEPLOY_PARTS_ID, &id);
                (chunk, properties.clone().with_headers(headers))
            })
            .collect()
    };
    // Published back to back on one channel, so they are stored in order
    // and next to each other; then every confirmation is awaited.
    let mut confirms = Vec::with_capacity(messages.len());
    for (body, properties) in messages {
        let confirm = channel
            .basic_publish(
                ShortString::default(),
                stream.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await?;
        confirms.push(confirm);
    }
    let mut stored = true;
    for confirm in confirms {
        stored &= confirm.await?.is_ack();
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_headers_are_read_strictly() {
        let id = || Some("abc".to_owned());
        assert_eq!(
            Part::parse("2/5", id()),
            Ok(Part {
                id: "abc".into(),
                index: 2,
                count: 5
            })
        );
        for bad in ["0/5", "6/5", "x/5", "5", "", "1/-1"] {
            let error = Part::parse(bad, id()).unwrap_err();
            assert!(error.contains(HEADER_DEPLOY_PART), "{bad}: {error}");
        }
        assert!(
            Part::parse("1/2", None)
                .unwrap_err()
                .contains(HEADER_DEPLOY_PARTS_ID)
        );
    }
}
