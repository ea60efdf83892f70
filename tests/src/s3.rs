//! Helpers for tests against the real S3-compatible server `scripts/with-s3` starts (or the
//! one `DRIFTLESS_TEST_S3_ENDPOINT` names): a client, fresh buckets, objects put in
//! parallel, multipart uploads, and the proxy (`scripts/s3-proxy.py`) that makes a server
//! answer 503 for a while or ignore conditional headers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use futures::{StreamExt, TryStreamExt};

/// The server under test.
pub fn endpoint() -> String {
    std::env::var("DRIFTLESS_TEST_S3_ENDPOINT")
        .expect("DRIFTLESS_TEST_S3_ENDPOINT is not set: run the tests with scripts/test (scripts/with-s3)")
}

/// A client of `endpoint`, path-style, with the test credentials.
pub fn client(endpoint: &str) -> Client {
    let id = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_else(|_| "testing".into());
    let secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_else(|_| "testing".into());
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version_latest()
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(id, secret, None, None, "tests"))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    Client::from_conf(config)
}

static BUCKETS: AtomicU64 = AtomicU64::new(0);

/// A new, empty bucket named after `name`, unique to this process.
pub async fn fresh_bucket(client: &Client, name: &str) -> String {
    let n = BUCKETS.fetch_add(1, Ordering::Relaxed);
    let bucket = format!("{name}-{}-{n}", std::process::id()).to_lowercase();
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    bucket
}

/// Puts every `(key, bytes)` into `bucket`, many at a time.
pub async fn put_all(client: &Client, bucket: &str, objects: Vec<(String, Vec<u8>)>) {
    futures::stream::iter(objects)
        .map(|(key, bytes)| async move {
            client
                .put_object()
                .bucket(bucket)
                .key(&key)
                .body(ByteStream::from(bytes))
                .send()
                .await
                .map(drop)
                .map_err(|e| format!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(e)))
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
}

/// Uploads `bytes` to `key` in parts of `part` bytes (at least 5 MiB, but the last).
pub async fn put_multipart(client: &Client, bucket: &str, key: &str, bytes: &[u8], part: usize) {
    let upload = client
        .create_multipart_upload()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("create multipart upload");
    let id = upload.upload_id().expect("upload id");
    let mut parts = Vec::new();
    for (i, chunk) in bytes.chunks(part).enumerate() {
        let n = i32::try_from(i + 1).unwrap();
        let done = client
            .upload_part()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .part_number(n)
            .body(ByteStream::from(chunk.to_vec()))
            .send()
            .await
            .expect("upload part");
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(done.e_tag().map(Into::into))
                .build(),
        );
    }
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(id)
        .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
        .send()
        .await
        .expect("complete multipart upload");
}

/// Deletes `key`.
pub async fn delete(client: &Client, bucket: &str, key: &str) {
    client
        .delete_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .expect("delete");
}

/// The bytes of `key`, or `None`.
pub async fn get(client: &Client, bucket: &str, key: &str) -> Option<Vec<u8>> {
    match client.get_object().bucket(bucket).key(key).send().await {
        Ok(out) => Some(out.body.collect().await.expect("read body").into_bytes().to_vec()),
        Err(_) => None,
    }
}

/// The ETag of `key`.
pub async fn etag(client: &Client, bucket: &str, key: &str) -> String {
    let head = client.head_object().bucket(bucket).key(key).send().await.expect("head");
    head.e_tag().unwrap_or_default().to_owned()
}

/// `scripts/s3-proxy.py` in front of `upstream`, with `args`; killed on drop.
#[derive(Debug)]
pub struct Proxy {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl Proxy {
    /// Starts the proxy and waits for its port.
    pub fn start(upstream: &str, args: &[&str]) -> Proxy {
        let python = std::env::var("DRIFTLESS_TEST_S3_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/s3-proxy.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--upstream", upstream, "--listen-port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/s3-proxy.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("the proxy prints its port");
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("unexpected first line from the proxy: {line:?}"));
        Proxy {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A second moto server that checks credentials (`INITIAL_NO_AUTH_ACTION_COUNT=0`: every
/// request must be signed with a key it issued), for tests of refused credentials. Needs
/// the interpreter `scripts/with-s3` installs moto into (`DRIFTLESS_TEST_S3_PYTHON`).
#[derive(Debug)]
pub struct AuthServer {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
}

impl AuthServer {
    /// Starts the server and waits (at most 30 s) until it accepts connections.
    pub fn start() -> AuthServer {
        let python = std::env::var("DRIFTLESS_TEST_S3_PYTHON")
            .expect("DRIFTLESS_TEST_S3_PYTHON names the interpreter moto is installed for (scripts/with-s3)");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(python)
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's server");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto with auth never listened on {port}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        AuthServer {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
