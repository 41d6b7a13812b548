//! `mixed chat`: the terminal UI (no subcommand) and the scriptable subcommands (`init`,
//! `link`, `code`, `contact add|list|verify`, `send`, `read`, `devices`). The messenger runs
//! on a node: a running one, over its local API socket (`--socket`), or one it starts in
//! this process from a node configuration (`--node-config`, passive unless `--bind`).
//! The passphrase comes from `MIXED_CHAT_PASSPHRASE` or is asked for on the terminal.

// the command line prints its answers and reads the clock
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};

use crate::core::{Chat, hex};
use crate::identity::LinkCode;
use crate::model::State;
use crate::store::KdfParams;
use crate::transport::{CHAT_PORT, Transport};

/// `mixed chat`'s options.
#[derive(Args, Debug)]
pub struct ChatArgs {
    /// The profile folder: this device's encrypted store (default: ~/.mixed/chat).
    #[arg(long, global = true)]
    pub profile: Option<PathBuf>,
    /// Talk to a running node over its local API socket (`api_socket` in its configuration).
    #[arg(long, global = true, conflicts_with = "node_config")]
    pub socket: Option<PathBuf>,
    /// Start a node in this process from this configuration (passive unless --bind).
    #[arg(long, global = true)]
    pub node_config: Option<PathBuf>,
    /// With --node-config: register the node and forward for others (bindanon).
    #[arg(long, global = true, requires = "node_config")]
    pub bind: bool,
    /// What to do (none: the terminal UI).
    #[command(subcommand)]
    pub command: Option<ChatCommand>,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum ChatCommand {
    /// Create a new user on this device (the primary device: it holds the identity key)
    /// and print its contact code.
    Init {
        /// This device's name.
        #[arg(long, default_value = "primary")]
        name: String,
    },
    /// Make this a new device of an existing user: paste the code `mixed chat devices link`
    /// printed on the primary device (waits for its answer).
    Link {
        /// The link code.
        code: String,
        /// This device's name.
        #[arg(long, default_value = "device")]
        name: String,
        /// Seconds to wait for the primary's answer.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// Print this user's contact code (give it to the people who may write to you).
    Code,
    /// Contacts.
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Send a message (and a file) to a contact; waits until it is delivered or stored.
    Send {
        /// The contact (name, or the start of its key in hex).
        to: String,
        /// The text.
        text: String,
        /// A file to attach (up to 1 MiB in all).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Seconds to wait for the outcome.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Collect for a while, then print the conversations (or one).
    Read {
        /// One contact only.
        contact: Option<String>,
        /// Seconds to collect first.
        #[arg(long, default_value_t = 5)]
        wait: u64,
    },
    /// This user's devices.
    #[command(subcommand)]
    Devices(DevicesCommand),
}

/// `mixed chat contact ...`.
#[derive(Subcommand, Debug)]
pub enum ContactCommand {
    /// Add a contact from their contact code.
    Add {
        /// The code.
        code: String,
        /// The name to give them.
        #[arg(long)]
        name: String,
    },
    /// List the contacts, with their safety numbers.
    List,
    /// Mark a contact verified once you compared safety numbers (in person, on a call).
    Verify {
        /// The contact.
        contact: String,
    },
}

/// `mixed chat devices ...`.
#[derive(Subcommand, Debug)]
pub enum DevicesCommand {
    /// List this user's devices.
    List,
    /// On the primary device: print a code to link a new device (good for ten minutes),
    /// and wait for the new device's request.
    Link {
        /// Seconds to wait for the new device.
        #[arg(long, default_value_t = 120)]
        wait: u64,
    },
    /// On the primary device: revoke a device (by name, or the start of its node key).
    Revoke {
        /// The device.
        device: String,
    },
}

/// Starts a node in this process from a configuration (the `node` crate provides it).
pub type Embedder<'a> = &'a dyn Fn(&Path, bool) -> Result<Box<dyn Transport>>;

/// Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn default_profile() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".mixed")
        .join("chat")
}

/// The passphrase: `MIXED_CHAT_PASSPHRASE`, or asked on the terminal (twice for a new
/// profile).
fn passphrase(new: bool) -> Result<String> {
    if let Ok(p) = std::env::var("MIXED_CHAT_PASSPHRASE") {
        return Ok(p);
    }
    let first = crate::tui::read_secret("passphrase: ")?;
    if new {
        if first.len() < 8 {
            bail!("a passphrase of at least 8 characters, please");
        }
        if crate::tui::read_secret("again: ")? != first {
            bail!("the two passphrases differ");
        }
    }
    Ok(first)
}

/// Handles what the node reports for `d`.
pub fn pump_for(c: &mut Chat, t: &mut dyn Transport, d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        c.pump(t, left.min(Duration::from_millis(200)), unix_now())?;
    }
}

/// Pumps until `done` or `d` passed; whether `done` held.
fn pump_until(
    c: &mut Chat,
    t: &mut dyn Transport,
    d: Duration,
    done: impl Fn(&Chat) -> bool,
) -> Result<bool> {
    let end = Instant::now() + d;
    while !done(c) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        c.pump(t, left.min(Duration::from_millis(200)), unix_now())?;
    }
    Ok(true)
}

/// Runs `mixed chat`.
pub fn run(args: ChatArgs, embedded: Embedder<'_>) -> Result<()> {
    let profile = args.profile.clone().unwrap_or_else(default_profile);
    let mut t: Box<dyn Transport> = match (&args.socket, &args.node_config) {
        (Some(s), _) => Box::new(
            local_client::Client::connect(s, Some(CHAT_PORT))
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        (None, Some(config)) => embedded(config, args.bind)?,
        (None, None) => bail!(
            "the messenger needs a node: --socket <a running node's api_socket> or \
             --node-config <node.toml> (see `mixed node --example-config`)"
        ),
    };
    let t = &mut *t;
    let now = unix_now();
    match args.command {
        Some(ChatCommand::Init { name }) => {
            let mut c = Chat::init(
                &profile,
                &passphrase(true)?,
                KdfParams::DEFAULT,
                t,
                &name,
                now,
            )?;
            pump_for(&mut c, t, Duration::from_millis(500))?;
            println!("a new user, on this device ({name}); your contact code:\n");
            println!("{}", c.contact_code()?);
            return Ok(());
        }
        Some(ChatCommand::Link { code, name, wait }) => {
            let code = LinkCode::decode(&code)?;
            let mut c = Chat::link(
                &profile,
                &passphrase(true)?,
                KdfParams::DEFAULT,
                t,
                &code,
                &name,
                now,
            )?;
            if pump_until(&mut c, t, Duration::from_secs(wait), |c| c.user().is_some())? {
                println!(
                    "linked: this device ({name}) is one of {} devices",
                    c.devices().len()
                );
                return Ok(());
            }
            bail!(
                "no answer from the primary device in {wait} s; is it running `mixed chat \
                 devices link`? This device asks again whenever `mixed chat` runs."
            );
        }
        _ => {}
    }
    let mut c = Chat::open(&profile, &passphrase(false)?, t)?;
    if c.user().is_none() {
        c.send_link_request(t)?;
    }
    pump_for(&mut c, t, Duration::from_millis(300))?;
    match args.command {
        None => crate::tui::run(&mut c, t),
        Some(ChatCommand::Code) => {
            println!("{}", c.contact_code()?);
            Ok(())
        }
        Some(ChatCommand::Contact(ContactCommand::Add { code, name })) => {
            let user = c.add_contact(t, &code, &name)?;
            pump_for(&mut c, t, Duration::from_secs(2))?;
            println!(
                "added {name}; compare this safety number with theirs (in person, on a call), \
                 then `mixed chat contact verify {name}`:\n{}",
                c.safety_number(&user).unwrap_or_default()
            );
            Ok(())
        }
        Some(ChatCommand::Contact(ContactCommand::List)) => {
            for k in c.contacts().cloned().collect::<Vec<_>>() {
                println!(
                    "{}{}  {} device(s)  {}\n  safety number {}",
                    k.name,
                    if k.verified { " (verified)" } else { "" },
                    k.list.list().devices.len(),
                    &hex(&k.user())[..16],
                    c.safety_number(&k.user()).unwrap_or_default()
                );
            }
            Ok(())
        }
        Some(ChatCommand::Contact(ContactCommand::Verify { contact })) => {
            let user = c.find_contact(&contact)?;
            c.verify_contact(&user)?;
            println!("{contact} verified");
            Ok(())
        }
        Some(ChatCommand::Send {
            to,
            text,
            file,
            wait,
        }) => {
            let user = c.find_contact(&to)?;
            let attachment = match file {
                Some(p) => Some((
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?,
                )),
                None => None,
            };
            let id = c.send(t, &user, &text, attachment, unix_now())?;
            pump_until(&mut c, t, Duration::from_secs(wait), |c| {
                c.message(&id).is_some_and(|m| m.state != State::Sending)
            })?;
            let state = c.message(&id).map_or(State::Sending, |m| m.state);
            println!("{}", state.label());
            Ok(())
        }
        Some(ChatCommand::Read { contact, wait }) => {
            pump_for(&mut c, t, Duration::from_secs(wait))?;
            let convs: Vec<[u8; 32]> = match contact {
                Some(q) => vec![c.find_contact(&q)?],
                None => c.contacts().map(|k| k.user()).collect(),
            };
            for u in convs {
                let name = c.contact(&u).map_or_else(|| hex(&u), |k| k.name.clone());
                println!("== {name}");
                for m in c.conversation(&u) {
                    println!("{}", crate::tui::line(&c, m));
                }
            }
            Ok(())
        }
        Some(ChatCommand::Devices(DevicesCommand::List)) => {
            for d in c.devices() {
                let me = if d.node_key == c.node_key() {
                    " (this device)"
                } else {
                    ""
                };
                println!("{}{me}  {}", d.name, &hex(&d.node_key)[..16]);
            }
            Ok(())
        }
        Some(ChatCommand::Devices(DevicesCommand::Link { wait })) => {
            let code = c.link_start(unix_now())?;
            println!(
                "on the new device: mixed chat link {} --name <its name>",
                code.encode()
            );
            let before = c.devices().len();
            if pump_until(&mut c, t, Duration::from_secs(wait), |c| {
                c.devices().len() > before
            })? {
                pump_for(&mut c, t, Duration::from_secs(2))?;
                println!("linked: {} devices", c.devices().len());
                Ok(())
            } else {
                bail!(
                    "no request from a new device in {wait} s (the code stays good for ten minutes: `mixed chat` answers it)"
                )
            }
        }
        Some(ChatCommand::Devices(DevicesCommand::Revoke { device })) => {
            let q = device.to_ascii_lowercase();
            let hits: Vec<[u8; 32]> = c
                .devices()
                .iter()
                .filter(|d| {
                    d.name.eq_ignore_ascii_case(&device)
                        || (q.len() >= 4 && hex(&d.node_key).starts_with(&q))
                })
                .map(|d| d.node_key)
                .collect();
            let [key] = hits[..] else {
                bail!("no single device {device:?}: `mixed chat devices list` lists them");
            };
            c.revoke(t, &key)?;
            pump_for(&mut c, t, Duration::from_secs(2))?;
            println!("revoked; {} devices left", c.devices().len());
            Ok(())
        }
        Some(ChatCommand::Init { .. } | ChatCommand::Link { .. }) => Ok(()),
    }
}
