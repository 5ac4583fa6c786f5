//! Real broker users for the tests of caller identity and deploy rights:
//! made with `rabbitmqctl add_user` and `set_permissions` (full rights on
//! the test vhost `/`, or the ones a test gives), deleted when dropped.

use std::process::Command;

/// A user on the test broker, deleted when dropped.
pub struct BrokerUser {
    /// Its name: `PREFIX-` and a fresh suffix, so runs cannot collide.
    pub name: String,
    password: String,
}

impl BrokerUser {
    /// Makes a user named `prefix-XXXXXXXX` with full rights on `/`, or
    /// `None` (after saying SKIPPED) where `rabbitmqctl` cannot reach the
    /// broker: there the tests that need one skip.
    pub fn create(prefix: &str) -> Option<BrokerUser> {
        Self::create_with(prefix, [".*", ".*", ".*"])
    }

    /// Like [`BrokerUser::create`], with these configure, write and read
    /// permissions on `/` (`rabbitmqctl set_permissions` regexes).
    pub fn create_with(prefix: &str, permissions: [&str; 3]) -> Option<BrokerUser> {
        if !crate::on_path("rabbitmqctl") {
            eprintln!("SKIPPED: rabbitmqctl is not installed, so no broker users can be made");
            return None;
        }
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let user = BrokerUser {
            name: format!("{prefix}-{}", &suffix[..8]),
            password: format!("pw-{suffix}"),
        };
        if let Err(why) = rabbitmqctl(&["add_user", &user.name, &user.password]) {
            eprintln!("SKIPPED: rabbitmqctl add_user failed ({why}); is it this broker's node?");
            return None;
        }
        let [configure, write, read] = permissions;
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            "/",
            &user.name,
            configure,
            write,
            read,
        ])
        .unwrap_or_else(|why| panic!("rabbitmqctl set_permissions: {why}"));
        Some(user)
    }

    /// The test broker's URL ([`crate::amqp_url`]), logging in as this user.
    pub fn url(&self) -> String {
        let url = crate::amqp_url();
        let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        format!("{scheme}://{}:{}@{host}", self.name, self.password)
    }
}

impl Drop for BrokerUser {
    fn drop(&mut self) {
        if let Err(why) = rabbitmqctl(&["delete_user", &self.name]) {
            eprintln!("could not delete broker user {}: {why}", self.name);
        }
    }
}

fn rabbitmqctl(args: &[&str]) -> Result<(), String> {
    let output = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}
