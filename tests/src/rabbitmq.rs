//! A real RabbitMQ broker for tests (Debian's rabbitmq-server, installed by
//! scripts/test), started on a free port with its own data folder, and a consumer that
//! keeps what it receives from the platform's exchange.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};

pub struct Broker {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    _tmp: tempfile::TempDir,
}

impl Broker {
    pub async fn start() -> Broker {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rmq");
        for d in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n").unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut b = Broker { port, dir, child: None, _tmp: tmp };
        b.restart().await;
        b
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the broker (again) on the same port and data, and waits until it accepts.
    pub async fn restart(&mut self) {
        let d = &self.dir;
        // The broker's own script, not Debian's wrapper: the wrapper switches to the
        // rabbitmq user and drops the environment that points at our folders.
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("RABBITMQ_NODENAME", format!("fleet{}@localhost", self.port))
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", (self.port as u32 + 20000).min(65000).to_string())
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_FEATURE_FLAGS_FILE", d.join("feature_flags"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("HOME", d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("rabbitmq-server starts (apt-get install rabbitmq-server)");
        self.child = Some(child);
        for _ in 0..240 {
            let probe =
                tokio::time::timeout(Duration::from_secs(2), Connection::connect(&self.url(), ConnectionProperties::default())).await;
            if let Ok(Ok(c)) = probe {
                let _ = c.close(0, "probe".into()).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("RabbitMQ did not start; see {}", d.join("log").display());
    }

    /// The broker goes away (its whole process group).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", c.id())]).status();
            let _ = c.wait();
        }
        // Wait until the port is closed.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Messages received: (routing key, body).
pub type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// Consumes the durable queue `queue`, bound to every event of the platform's exchange.
pub async fn consume(url: &str, queue: &str, into: Received) -> lapin::Result<Connection> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        "sentiric_events".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions { durable: true, ..Default::default() },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(queue.into(), QueueDeclareOptions { durable: true, ..Default::default() }, FieldTable::default()).await?;
    ch.queue_bind(queue.into(), "sentiric_events".into(), "call.#".into(), QueueBindOptions::default(), FieldTable::default()).await?;
    let consumer = ch.basic_consume(queue.into(), "test".into(), BasicConsumeOptions::default(), FieldTable::default()).await?;
    consumer.set_delegate(move |delivery: lapin::message::DeliveryResult| {
        let into = into.clone();
        async move {
            if let Ok(Some(d)) = delivery {
                into.lock().unwrap().push((d.routing_key.to_string(), d.data.clone()));
                let _ = d.ack(BasicAckOptions::default()).await;
            }
        }
    });
    Ok(conn)
}
