//! STS over HTTPS: the broker's own HTTPS client (rustls on ring, `src/sts.rs`) against moto
//! serving TLS with a certificate from a test CA. Trusted through `SSL_CERT_FILE` (how the
//! container image points at its CA bundle) the calls succeed; with a bundle that lacks the CA
//! the handshake fails and the broker stays unready, naming the certificate problem.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::helpers::{ConfigDir, TOKEN, TestBroker, eventually, free_port, role, venv_bin};

/// A CA, and a server certificate it signed for localhost and 127.0.0.1 (Python's
/// `cryptography`, which moto depends on).
fn make_certs(dir: &Path) {
    let script = r#"
import datetime, ipaddress, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ExtendedKeyUsageOID
d = sys.argv[1]
now = datetime.datetime.now(datetime.timezone.utc)
def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
ca_key = ec.generate_private_key(ec.SECP256R1())
ca = (x509.CertificateBuilder().subject_name(name("sts-broker test CA")).issuer_name(name("sts-broker test CA"))
      .public_key(ca_key.public_key()).serial_number(1).not_valid_before(now - datetime.timedelta(minutes=5))
      .not_valid_after(now + datetime.timedelta(days=1))
      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
      .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                   key_encipherment=False, data_encipherment=False, key_agreement=False,
                                   encipher_only=False, decipher_only=False), critical=True)
      .sign(ca_key, hashes.SHA256()))
key = ec.generate_private_key(ec.SECP256R1())
leaf = (x509.CertificateBuilder().subject_name(name("localhost")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256()))
open(d + "/ca.pem", "wb").write(ca.public_bytes(serialization.Encoding.PEM))
open(d + "/server.pem", "wb").write(leaf.public_bytes(serialization.Encoding.PEM))
open(d + "/server.key", "wb").write(key.private_bytes(serialization.Encoding.PEM,
    serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()))
# A bundle that does not hold the test CA: another CA's certificate.
other_key = ec.generate_private_key(ec.SECP256R1())
other = (x509.CertificateBuilder().subject_name(name("unrelated CA")).issuer_name(name("unrelated CA"))
         .public_key(other_key.public_key()).serial_number(3).not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
         .sign(other_key, hashes.SHA256()))
open(d + "/other-ca.pem", "wb").write(other.public_bytes(serialization.Encoding.PEM))
"#;
    let ok = Command::new(venv_bin("python"))
        .arg("-c")
        .arg(script)
        .arg(dir)
        .status()
        .expect("run python")
        .success();
    assert!(ok, "generating the test certificates failed");
}

/// moto on HTTPS, killed on drop.
struct TlsMoto {
    child: Child,
    port: u16,
}

impl Drop for TlsMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_tls_moto(dir: &Path) -> TlsMoto {
    let port = free_port();
    let child = Command::new(venv_bin("moto_server"))
        .args(["-H", "127.0.0.1", "-p", &port.to_string(), "-c"])
        .arg(dir.join("server.pem"))
        .arg("-k")
        .arg(dir.join("server.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moto_server");
    let up = eventually(Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
    })
    .await;
    assert!(up, "moto_server (TLS) did not listen");
    TlsMoto { child, port }
}

fn config(port: u16) -> String {
    format!(
        r#"
[sts]
region = "us-east-1"
endpoint = "https://localhost:{port}"
timeout = "5s"

[source]
kind = "static_env"

[refresh]
backoff_min = "100ms"
backoff_max = "1s"

[ecs]
listen = "127.0.0.1:0"

[admin]
listen = "127.0.0.1:0"
"#
    ) + &role("app", "")
}

#[tokio::test]
async fn sts_over_https_with_a_ca_from_ssl_cert_file() {
    let dir = ConfigDir::new();
    make_certs(dir.path());
    let moto = start_tls_moto(dir.path()).await;
    let ca = dir.path().join("ca.pem").display().to_string();
    let broker = TestBroker::start_wrapped(
        &dir,
        &config(moto.port),
        "info",
        &[],
        &[("SSL_CERT_FILE", &ca)],
    )
    .await;
    broker.wait_ready(Duration::from_secs(30)).await;
    let r = broker.ecs_get("app", Some(TOKEN)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        r.json()["AccessKeyId"]
            .as_str()
            .is_some_and(|k| k.starts_with("ASIA")),
        "moto's credentials: {}",
        r.body
    );
}

#[tokio::test]
async fn an_untrusted_sts_certificate_fails_the_handshake() {
    let dir = ConfigDir::new();
    make_certs(dir.path());
    let moto = start_tls_moto(dir.path()).await;
    let other = dir.path().join("other-ca.pem").display().to_string();
    let broker = TestBroker::start_wrapped(
        &dir,
        &config(moto.port),
        "info",
        &[],
        &[("SSL_CERT_FILE", &other)],
    )
    .await;
    let failed = eventually(Duration::from_secs(20), || async {
        broker.role_status("app").await["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("certificate"))
    })
    .await;
    assert!(
        failed,
        "no certificate error in /v1/roles: {}\n{}",
        broker.role_status("app").await,
        broker.logs()
    );
    assert_eq!(broker.admin_get("/readyz").await.status, 503);
    assert_eq!(broker.ecs_get("app", Some(TOKEN)).await.status, 503);
}
