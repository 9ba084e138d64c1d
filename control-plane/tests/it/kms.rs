//! Both KMS providers: data keys round-trip, are bound to their context, refuse tampering, rewrap, and
//! an unreachable KMS is reported as unavailable (a 503), not as a refusal.

use std::os::unix::fs::PermissionsExt;

use keygate_control_plane::kms::aws::AwsKms;
use keygate_control_plane::kms::local::{LocalKms, MasterKeyError};
use keygate_control_plane::kms::{Kms, KmsContext, KmsError, WrappedKey};
use keygate_shared::KeyId;

use crate::support::kms_server::KmsServer;

const ID: KeyId = KeyId::from_u128(0x0190_a1b2_c3d4_7e8f_9a0b_1c2d_3e4f_5061);
const OTHER_ID: KeyId = KeyId::from_u128(42);

/// What every provider must do, whoever wraps the keys.
async fn check_provider(kms: &dyn Kms) {
    let context = KmsContext::api_key_secret(ID);
    let (key, wrapped) = kms.generate_data_key(&context).await.unwrap();
    let (second, _) = kms.generate_data_key(&context).await.unwrap();
    assert_ne!(key.expose(), second.expose(), "two data keys alike");

    let unwrapped = kms.decrypt(&wrapped, &context).await.unwrap();
    assert_eq!(unwrapped.expose(), key.expose());

    let wrong_context = kms.decrypt(&wrapped, &KmsContext::api_key_secret(OTHER_ID)).await;
    assert!(matches!(wrong_context, Err(KmsError::Refused(_))), "{wrong_context:?}");

    let mut tampered = wrapped.clone();
    let middle = tampered.blob.len() / 2;
    tampered.blob[middle] ^= 0x01;
    let tampered = kms.decrypt(&tampered, &context).await;
    assert!(matches!(tampered, Err(KmsError::Refused(_))), "{tampered:?}");

    let rewrapped = kms.rewrap(&wrapped, &context).await.unwrap();
    assert_ne!(rewrapped.blob, wrapped.blob);
    assert_eq!(kms.decrypt(&rewrapped, &context).await.unwrap().expose(), key.expose());

    assert_eq!(format!("{key:?}"), "DataKey(<redacted>)");
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("keygate-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn local_provider_wraps_binds_and_rewraps() {
    let dir = temp_dir("local-kms");
    let kms = LocalKms::open_or_create(&dir.join("master.key")).unwrap();
    check_provider(&kms).await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn local_master_key_is_created_private_and_reused() {
    let dir = temp_dir("master-key");
    let path = dir.join("data/master.key");
    let first = LocalKms::open_or_create(&path).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 32);
    let context = KmsContext::api_key_secret(ID);
    let (key, wrapped) = first.generate_data_key(&context).await.unwrap();

    let reopened = LocalKms::open_or_create(&path).unwrap();
    assert_eq!(reopened.key_id(), first.key_id());
    assert_eq!(reopened.decrypt(&wrapped, &context).await.unwrap().expose(), key.expose());
    assert!(!format!("{reopened:?}").contains(&hex::encode(std::fs::read(&path).unwrap())));

    let other = LocalKms::open_or_create(&dir.join("other.key")).unwrap();
    assert_ne!(other.key_id(), first.key_id());
    assert!(matches!(other.decrypt(&wrapped, &context).await, Err(KmsError::Refused(_))));

    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(LocalKms::open_or_create(&path), Err(MasterKeyError::TooOpen(0o644))));
    std::fs::write(dir.join("short.key"), [0u8; 31]).unwrap();
    std::fs::set_permissions(dir.join("short.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(matches!(LocalKms::open_or_create(&dir.join("short.key")), Err(MasterKeyError::WrongLength)));
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn aws_provider_against_the_kms_api_server() {
    let mut server = KmsServer::start();
    let first_key = server.create_key().await;
    let kms = AwsKms::from_client(server.client(), first_key.clone());
    check_provider(&kms).await;

    // Rewrap moves a data key to the current KMS key; it still opens, and only under its context.
    let context = KmsContext::api_key_secret(ID);
    let (key, wrapped) = kms.generate_data_key(&context).await.unwrap();
    assert_eq!(wrapped.kms_key_id, first_key);
    let second_key = server.create_key().await;
    let rotated = AwsKms::from_client(server.client(), second_key.clone());
    let rewrapped: WrappedKey = rotated.rewrap(&wrapped, &context).await.unwrap();
    assert_eq!(rewrapped.kms_key_id, second_key);
    assert_eq!(rotated.decrypt(&rewrapped, &context).await.unwrap().expose(), key.expose());
    let wrong = rotated.rewrap(&wrapped, &KmsContext::api_key_secret(OTHER_ID)).await;
    assert!(matches!(wrong, Err(KmsError::Refused(_))), "{wrong:?}");

    server.stop();
    let down = kms.generate_data_key(&context).await;
    assert!(matches!(down, Err(KmsError::Unavailable(_))), "{down:?}");
    let down = kms.decrypt(&wrapped, &context).await;
    assert!(matches!(down, Err(KmsError::Unavailable(_))), "{down:?}");
}
