//! AWS KMS through aws-sdk-kms: GenerateDataKey (AES_256), Decrypt and ReEncrypt, each with the
//! encryption context. The endpoint is configurable, so tests drive a local KMS-compatible server.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::SdkError;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};

use super::{DataKey, Kms, KmsContext, KmsError, WrappedKey};

/// AWS KMS, or any server that speaks its API.
#[derive(Debug, Clone)]
pub struct AwsKms {
    client: aws_sdk_kms::Client,
    key_id: String,
}

impl AwsKms {
    /// A client from the standard AWS chain (credentials, region), Ring-based rustls, bounded timeouts,
    /// and `endpoint` in place of AWS's when given.
    pub async fn connect(key_id: String, endpoint: Option<String>) -> Self {
        let http =
            aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(CryptoMode::Ring)).build_https();
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(2))
            .operation_attempt_timeout(Duration::from_secs(5))
            .operation_timeout(Duration::from_secs(10))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http).timeout_config(timeouts);
        if let Some(endpoint) = endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        Self::from_client(aws_sdk_kms::Client::new(&loader.load().await), key_id)
    }

    /// Wraps a client built elsewhere; `key_id` is the key new data keys are wrapped under.
    pub fn from_client(client: aws_sdk_kms::Client, key_id: String) -> Self {
        Self { client, key_id }
    }
}

/// Transport failures and server-side faults mean "try later"; anything else KMS said is a refusal.
fn classify<E>(error: SdkError<E, HttpResponse>) -> KmsError
where
    E: std::error::Error + Send + Sync + 'static,
{
    let unavailable = match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(service) => service.raw().status().is_server_error(),
        _ => false,
    };
    if unavailable {
        KmsError::Unavailable(Box::new(error))
    } else {
        KmsError::Refused(Box::new(error))
    }
}

#[async_trait]
impl Kms for AwsKms {
    fn provider(&self) -> &'static str {
        "aws"
    }

    fn current_key_id(&self) -> &str {
        &self.key_id
    }

    async fn generate_data_key(&self, context: &KmsContext) -> Result<(DataKey, WrappedKey), KmsError> {
        let response = self
            .client
            .generate_data_key()
            .key_id(&self.key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context.pairs()))
            .send()
            .await
            .map_err(classify)?;
        // The SDK's Blob is not zeroized: copy the key out and drop the response at once.
        let key =
            response.plaintext().and_then(|blob| DataKey::from_slice(blob.as_ref())).ok_or(KmsError::Malformed)?;
        let wrapped = WrappedKey {
            blob: response.ciphertext_blob().ok_or(KmsError::Malformed)?.as_ref().to_vec(),
            kms_key_id: response.key_id().unwrap_or(&self.key_id).to_owned(),
            shared_id: context.shared_id.clone(),
        };
        drop(response);
        Ok((key, wrapped))
    }

    async fn decrypt(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<DataKey, KmsError> {
        let response = self
            .client
            .decrypt()
            .key_id(&wrapped.kms_key_id)
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .set_encryption_context(Some(context.pairs()))
            .send()
            .await
            .map_err(classify)?;
        let key = response.plaintext().and_then(|blob| DataKey::from_slice(blob.as_ref())).ok_or(KmsError::Malformed);
        drop(response);
        key
    }

    async fn rewrap(&self, wrapped: &WrappedKey, context: &KmsContext) -> Result<WrappedKey, KmsError> {
        let response = self
            .client
            .re_encrypt()
            .ciphertext_blob(Blob::new(wrapped.blob.clone()))
            .source_key_id(&wrapped.kms_key_id)
            .set_source_encryption_context(Some(context.pairs()))
            .destination_key_id(&self.key_id)
            .set_destination_encryption_context(Some(context.pairs()))
            .send()
            .await
            .map_err(classify)?;
        Ok(WrappedKey {
            blob: response.ciphertext_blob().ok_or(KmsError::Malformed)?.as_ref().to_vec(),
            kms_key_id: response.key_id().unwrap_or(&self.key_id).to_owned(),
            shared_id: context.shared_id.clone(),
        })
    }
}
