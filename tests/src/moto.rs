//! moto's KMS-compatible server (`python3 -m moto.server`, PyPI `moto[server]`) on loopback, with
//! SigV4 verification switched on, and the IAM/STS set-up the KMS tests and the bench need.
//!
//! moto runs with `INITIAL_NO_AUTH_ACTION_COUNT` = [`BOOTSTRAP_ACTIONS`]: the first requests (the
//! IAM user, its policy, a role, the role's policy, the user's access key) are taken unsigned;
//! every later one must carry a valid signature of a key moto knows, and moto recomputes it
//! (a wrong secret or session token is refused). moto implements no `Recipient`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use cosigner_kms::aws::client::{KmsClient, TcpTransport};
use cosigner_kms::aws::sigv4::{self, Scope};
use cosigner_kms::aws::{Credentials, Transport};

use crate::{ChildGuard, free_port};

/// Requests moto takes without a signature before it checks them all.
pub const BOOTSTRAP_ACTIONS: u32 = 5;
/// moto's account id.
pub const ACCOUNT: &str = "123456789012";
/// The region the tests use.
pub const REGION: &str = "us-east-1";
/// The role [`Moto::role_credentials`] assumes.
pub const ROLE: &str = "cosigner-parent";

/// A running moto server; killed when dropped.
#[derive(Debug)]
pub struct Moto {
    _child: ChildGuard,
    /// Its loopback address.
    pub addr: SocketAddr,
}

/// Temporary credentials from STS, as an instance role's are.
#[derive(Debug, Clone)]
pub struct RoleCredentials {
    /// The credentials (with a session token).
    pub credentials: Credentials,
    /// `Expiration` as STS gave it (RFC 3339).
    pub expiration: String,
}

/// True if `python3 -c 'import moto.server'` works.
pub fn installed() -> bool {
    Command::new("python3")
        .args(["-c", "import moto.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The line printed when moto is missing.
pub const SKIP_LINE: &str = "SKIPPED: moto is not installed (`python3 -c 'import moto.server'` \
                             failed); `make deps` installs it (pip install 'moto[server]')";

impl Moto {
    /// Starts moto on a free loopback port, or prints [`SKIP_LINE`] and returns `None` when it is
    /// not installed.
    ///
    /// # Panics
    /// If moto is installed but does not come up within 30 s.
    pub fn start_or_skip() -> Option<Moto> {
        if !installed() {
            eprintln!("{SKIP_LINE}");
            return None;
        }
        match Self::start() {
            Ok(moto) => Some(moto),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// [`Moto::start_or_skip`], then [`Moto::user_credentials`]: a server and its user's
    /// long-term credentials, or `None` (the skip line printed) when moto is not installed.
    ///
    /// # Panics
    /// If moto is installed but does not come up, or refuses the user's bootstrap.
    pub fn start_with_user_or_skip() -> Option<(Moto, Credentials)> {
        let moto = Self::start_or_skip()?;
        match moto.user_credentials() {
            Ok(user) => Some((moto, user)),
            Err(e) => panic!("{e:#}"),
        }
    }

    /// Starts moto on a free loopback port.
    pub fn start() -> anyhow::Result<Moto> {
        let port = free_port();
        let child = Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env(
                "INITIAL_NO_AUTH_ACTION_COUNT",
                BOOTSTRAP_ACTIONS.to_string(),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting moto")?;
        let child = ChildGuard(child);
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("moto did not start on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Moto {
            _child: child,
            addr,
        })
    }

    /// `127.0.0.1:PORT`: the `Host` header (and `[sealer] host`) to use with moto.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// A KMS client for moto with `credentials` (plain HTTP on loopback).
    pub fn kms_client(&self, credentials: Credentials) -> anyhow::Result<KmsClient> {
        let transport: Box<dyn Transport> = Box::new(TcpTransport {
            addr: self.addr,
            timeout: Duration::from_secs(10),
        });
        Ok(KmsClient::new(transport, REGION, Box::new(credentials))?.with_host(&self.host())?)
    }

    /// One signed query-API call (form-encoded POST) to `service` (`iam`, `sts`); the XML answer.
    pub fn query(
        &self,
        service: &str,
        credentials: &Credentials,
        form: &str,
    ) -> anyhow::Result<String> {
        let host = self.host();
        let headers = [
            (
                "Content-Type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("Host", host.as_str()),
        ];
        let mut req = sigv4::post_head(
            &headers,
            form.as_bytes(),
            credentials,
            &Scope {
                region: REGION,
                service,
                time: SystemTime::now(),
            },
        )?;
        let mut s = TcpStream::connect(self.addr)?;
        req.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        ));
        s.write_all(req.as_bytes())?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        if !out.starts_with("HTTP/1.1 200") {
            bail!("{service} {form}: {out}");
        }
        Ok(out)
    }

    /// An IAM user allowed `kms:*` and `sts:AssumeRole`, a role [`ROLE`] allowed `kms:*`, and the
    /// user's access key (long-term credentials, no session token). Uses up moto's unsigned
    /// bootstrap requests: call it once per server.
    pub fn user_credentials(&self) -> anyhow::Result<Credentials> {
        let bootstrap = Credentials::new("AKIDBOOTSTRAP0000000", "bootstrap", None);
        let iam = |form: &str| self.query("iam", &bootstrap, form);
        let allow = |actions: &str| {
            sigv4::uri_encode(&format!(
                r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Action":{actions},"Resource":"*"}}]}}"#
            ))
        };
        iam("Action=CreateUser&UserName=cosigner&Version=2010-05-08")?;
        iam(&format!(
            "Action=PutUserPolicy&UserName=cosigner&PolicyName=kms&PolicyDocument={}\
             &Version=2010-05-08",
            allow(r#"["kms:*","sts:AssumeRole"]"#)
        ))?;
        let trust = sigv4::uri_encode(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"sts:AssumeRole"}]}"#,
        );
        iam(&format!(
            "Action=CreateRole&RoleName={ROLE}&AssumeRolePolicyDocument={trust}&Version=2010-05-08"
        ))?;
        iam(&format!(
            "Action=PutRolePolicy&RoleName={ROLE}&PolicyName=kms&PolicyDocument={}\
             &Version=2010-05-08",
            allow(r#""kms:*""#)
        ))?;
        let xml = iam("Action=CreateAccessKey&UserName=cosigner&Version=2010-05-08")?;
        Ok(Credentials::new(
            xml_field(&xml, "AccessKeyId")?,
            xml_field(&xml, "SecretAccessKey")?,
            None,
        ))
    }

    /// Temporary credentials of [`ROLE`] (STS `AssumeRole`, signed with `user`'s key): an access
    /// key id, a secret, a session token and an expiration, like an instance role's.
    pub fn role_credentials(&self, user: &Credentials) -> anyhow::Result<RoleCredentials> {
        let xml = self.query(
            "sts",
            user,
            &format!(
                "Action=AssumeRole&RoleArn=arn%3Aaws%3Aiam%3A%3A{ACCOUNT}%3Arole%2F{ROLE}\
                 &RoleSessionName=cosigner-test&Version=2011-06-15"
            ),
        )?;
        Ok(RoleCredentials {
            credentials: Credentials::new(
                xml_field(&xml, "AccessKeyId")?,
                xml_field(&xml, "SecretAccessKey")?,
                Some(xml_field(&xml, "SessionToken")?),
            ),
            expiration: xml_field(&xml, "Expiration")?,
        })
    }

    /// A new symmetric KMS key; its ARN.
    pub fn create_key(&self, credentials: &Credentials) -> anyhow::Result<String> {
        let created = self
            .kms_client(credentials.clone())?
            .call("CreateKey", &serde_json::json!({}))?;
        created
            .pointer("/KeyMetadata/Arn")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .context("CreateKey answered no ARN")
    }
}

/// The text of the first `<name>…</name>` in `xml`.
pub fn xml_field(xml: &str, name: &str) -> anyhow::Result<String> {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .with_context(|| format!("no <{name}> in {xml}"))?
        + open.len();
    let len = xml
        .get(start..)
        .and_then(|rest| rest.find(&format!("</{name}>")))
        .with_context(|| format!("no </{name}>"))?;
    Ok(xml.get(start..start + len).unwrap_or_default().to_owned())
}
