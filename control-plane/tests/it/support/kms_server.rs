//! The KMS API server (moto's, from PyPI), started on a free loopback port for one test and killed after.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};

pub struct KmsServer {
    child: Option<Child>,
    pub endpoint: String,
}

/// `KEYGATE_KMS_SERVER`, or what `scripts/kms-server.sh` installs (once, into the per-user cache).
fn server_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("KEYGATE_KMS_SERVER") {
        return path.into();
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kms-server.sh");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output().expect("run kms-server.sh");
    assert!(out.status.success(), "scripts/kms-server.sh failed");
    PathBuf::from(String::from_utf8(out.stdout).expect("utf-8 path").trim())
}

impl KmsServer {
    pub fn start() -> Self {
        let port = crate::support::free_port();
        let child = Command::new(server_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the KMS API server");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the KMS API server did not start listening");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child: Some(child), endpoint: format!("http://127.0.0.1:{port}") }
    }

    /// A client with static test credentials, as the SDK would talk to AWS.
    pub fn client(&self) -> aws_sdk_kms::Client {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("testing", "testing", None, None, "keygate-tests"))
            .endpoint_url(&self.endpoint)
            .http_client(http)
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// A new symmetric KMS key; returns its ARN.
    pub async fn create_key(&self) -> String {
        let created = self.client().create_key().description("keygate test key").send().await.unwrap();
        created.key_metadata().unwrap().arn().unwrap().to_owned()
    }

    /// Stops the server: from now on every call to it fails to connect.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for KmsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
