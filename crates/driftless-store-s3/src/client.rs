//! The S3 client of a copy, and what its errors say.
//!
//! Credentials come from the config (`access_key_id` / `secret_access_key`, usually
//! `${ENV}`) or the standard AWS chain (environment, shared profile, web identity). The
//! client computes and validates request and response checksums only where an operation
//! requires them: the SDK's newer default (a CRC on every upload, sent as an `aws-chunked`
//! trailer) is refused by many S3-compatible servers, and driftless fingerprints objects
//! itself. Throttling (503 SlowDown) and 5xx answers are retried inside the SDK's standard
//! retry strategy, with exponential backoff and jitter.

use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::S3Options;

/// Attempts per request, the first included: with the backoff below, a server that
/// throttles or fails for about a minute is ridden out.
pub(crate) const MAX_ATTEMPTS: u32 = 10;
/// The first retry's delay; each later one doubles, with jitter, up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// The longest delay between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// The region a custom endpoint is signed for when nothing else names one.
const FALLBACK_REGION: &str = "us-east-1";

/// Builds the client for a copy, and returns it with the region it uses.
pub(crate) async fn build(options: &S3Options) -> (aws_sdk_s3::Client, String) {
    let region = RegionProviderChain::first_try(options.region.clone().map(Region::new))
        .or_default_provider()
        .or_else(Region::new(FALLBACK_REGION));
    let retry = RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(INITIAL_BACKOFF)
        .with_max_backoff(MAX_BACKOFF);
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(retry);
    if let (Some(id), Some(secret)) = (&options.access_key_id, &options.secret_access_key) {
        loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "driftless-config"));
    }
    let shared = loader.load().await;
    let region = shared.region().map_or(FALLBACK_REGION.to_owned(), |r| r.to_string());
    let mut config = aws_sdk_s3::config::Builder::from(&shared)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .force_path_style(options.path_style);
    if let Some(endpoint) = &options.endpoint {
        config = config.endpoint_url(endpoint);
    }
    (aws_sdk_s3::Client::from_conf(config.build()), region)
}

/// The S3 error code of a failed request (`NoSuchBucket`, `SlowDown`, ...), if it has one.
pub(crate) fn code<E: ProvideErrorMetadata>(e: &SdkError<E>) -> Option<&str> {
    match e {
        SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// The HTTP status of a failed request's response, if one came.
pub(crate) fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

/// What a failed request means, for a message: the code and a hint for the common causes,
/// then the SDK's own account. Credentials never appear in SDK errors.
pub(crate) fn describe<E>(e: &SdkError<E>, bucket: &str) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let hint = match (code(e), status(e)) {
        (Some("NoSuchBucket"), _) => format!("bucket {bucket:?} does not exist"),
        (Some("InvalidAccessKeyId" | "SignatureDoesNotMatch" | "InvalidToken" | "ExpiredToken"), _) => {
            format!("bucket {bucket:?}: the credentials were refused")
        }
        (Some("AccessDenied"), _) | (_, Some(403)) => format!("bucket {bucket:?}: access denied"),
        (Some("PermanentRedirect" | "AuthorizationHeaderMalformed" | "IllegalLocationConstraintException"), _)
        | (_, Some(301)) => format!("bucket {bucket:?} is in another region than the one configured"),
        (_, Some(404)) => format!("bucket {bucket:?} does not exist"),
        (Some(code), _) => format!("bucket {bucket:?}: {code}"),
        (None, _) => format!("bucket {bucket:?}"),
    };
    match e {
        // The service said why: its code and message are the account; the raw response
        // adds nothing a person needs.
        SdkError::ServiceError(s) => match s.err().message() {
            Some(message) => format!("{hint}: {message}"),
            None => hint,
        },
        // No answer (connection refused, timeout, TLS): the SDK's chain of causes says which.
        _ => format!("{hint}: {}", DisplayErrorContext(e)),
    }
}
