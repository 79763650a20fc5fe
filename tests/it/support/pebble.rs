//! Pebble (Debian `pebble`), the ACME test CA, on loopback: its own HTTPS certificate made here,
//! its HTTP-01 validation pointed at the load balancer's plain-HTTP port, and every name it
//! looks up answered with 127.0.0.1 by `pebble-challtestsrv`'s DNS (a resolver the test owns;
//! nothing leaves the machine). Both processes are killed on drop.

use super::envoy::free_port;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Pebble {
    children: Vec<Child>,
    /// What starts the two processes again, on the same ports.
    config: serde_json::Value,
    dns: u16,
    dns_mgmt: u16,
    pub dir: tempfile::TempDir,
    /// The ACME directory URL (`acme.directory_url`).
    pub directory_url: String,
    /// The CA that signed Pebble's own HTTPS certificate (`acme.ca_file`).
    pub ca_file: PathBuf,
    pub management: u16,
    ca_pem: String,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Options for a Pebble run.
pub struct Options<'a> {
    /// The load balancer's plain-HTTP port: where Pebble asks for HTTP-01 tokens.
    pub http_port: u16,
    /// Lifetime of the certificates it issues, in seconds.
    pub validity_s: u64,
    /// Names it refuses to issue for (its "rejectedIdentifier" problem).
    pub blocklist: &'a [&'a str],
    /// When set, accounts need external account binding with this key id and base64url key.
    pub eab: Option<(&'a str, &'a str)>,
}

impl Pebble {
    pub async fn start(o: Options<'_>) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        // Pebble's own HTTPS: a CA made here, and a certificate for 127.0.0.1 signed by it.
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let ca_file = write("ca.pem", &ca.pem());
        let cert = write("cert.pem", &leaf.pem());
        let key = write("key.pem", &key.serialize_pem());

        let (acme, management, dns, tls) = (free_port(), free_port(), free_port(), free_port());
        let dns_mgmt = free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{acme}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": cert,
            "privateKey": key,
            "httpPort": o.http_port,
            "tlsPort": tls,
            "ocspResponderURL": "",
            "domainBlocklist": o.blocklist,
            "certificateValidityPeriod": o.validity_s,
            "externalAccountBindingRequired": o.eab.is_some(),
            "externalAccountMACKeys": o.eab.map(|(kid, key)| serde_json::json!({kid: key})),
        }});
        let mut p = Pebble {
            children: Vec::new(),
            config,
            dns,
            dns_mgmt,
            directory_url: format!("https://127.0.0.1:{acme}/dir"),
            ca_file,
            management,
            ca_pem: ca.pem(),
            dir,
        };
        p.spawn();
        p.wait_ready().await;
        p
    }

    fn spawn(&mut self) {
        let config_path = self.dir.path().join("pebble.json");
        std::fs::write(&config_path, self.config.to_string()).unwrap();
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.path().join(name))
                .unwrap()
        };
        let dns_server = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{}", self.dns)])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", self.dns_mgmt)])
            .stdout(log("challtestsrv.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "pebble-challtestsrv is required (Debian package pebble; `make test` installs it)",
            );
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(&config_path)
            .args(["-dnsserver", &format!("127.0.0.1:{}", self.dns)])
            // No random sleeps before validation, no random nonce rejections, no reuse of a
            // valid authorization (every order proves the name again).
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble is required (Debian package pebble; `make test` installs it)");
        self.children = vec![dns_server, pebble];
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.get(&self.directory_url).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The CA goes away (both processes killed); its ports stay reserved for `restart`.
    pub fn stop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.clear();
    }

    /// The CA comes back on the same ports, refusing `blocklist`. Like any Pebble start it
    /// forgets every account and order, and issues under a new root.
    pub async fn restart(&mut self, blocklist: &[&str]) {
        self.stop();
        self.config["pebble"]["domainBlocklist"] = serde_json::json!(blocklist);
        self.spawn();
        self.wait_ready().await;
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .build()
            .unwrap()
    }

    async fn get(&self, url: &str) -> Result<String, reqwest::Error> {
        self.client()
            .get(url)
            .send()
            .await?
            .error_for_status()?
            .text()
            .await
    }

    /// The root Pebble issues under (it makes a new one at every start).
    pub async fn root_pem(&self) -> String {
        self.get(&format!("https://127.0.0.1:{}/roots/0", self.management))
            .await
            .expect("pebble's root")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}
