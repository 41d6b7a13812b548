//! The terminal UI of `mixed chat` (ratatui): contacts on the left, the conversation on
//! the right with each message's delivery state, a line to write in. Commands start with
//! `/`: `/add <code> <name>`, `/code`, `/safety`, `/verify`, `/devices`, `/link`,
//! `/revoke <device>`, `/help`, `/quit`. Up and Down choose the contact; Enter sends; Esc
//! closes a panel, or quits.

// the terminal is this module's to drive
#![allow(clippy::print_stdout, clippy::print_stderr, clippy::disallowed_methods)]

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::{DefaultTerminal, Frame};

use crate::cli::unix_now;
use crate::core::{Chat, Notice, hex};
use crate::identity::UserKey;
use crate::model::Message;
use crate::transport::Transport;

/// A message as one line: time, who, text, attachment, state.
pub fn line(c: &Chat, m: &Message) -> String {
    let secs = m.sent_at % 86_400;
    let who = if m.from_me {
        "me".to_string()
    } else {
        c.contact(&m.conv)
            .map_or_else(|| "?".into(), |k| k.name.clone())
    };
    let attachment = m
        .attachment
        .as_ref()
        .map(|(n, d)| format!(" [{n}, {} bytes]", d.len()))
        .unwrap_or_default();
    let state = if m.from_me {
        format!("  ({})", m.state.label())
    } else if m.stored {
        "  (while offline)".to_string()
    } else {
        String::new()
    };
    format!(
        "{:02}:{:02} {who}: {}{attachment}{state}",
        secs / 3600,
        secs / 60 % 60,
        m.body
    )
}

/// Reads a secret from the terminal without echo (or a line of standard input when it is
/// no terminal).
pub fn read_secret(prompt: &str) -> Result<String> {
    use std::io::IsTerminal;
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    if !std::io::stdin().is_terminal() {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s)?;
        return Ok(s.trim_end_matches(['\r', '\n']).to_string());
    }
    ratatui::crossterm::terminal::enable_raw_mode()?;
    let mut s = String::new();
    let result = loop {
        match event::read() {
            Ok(Event::Key(k)) if k.kind == KeyEventKind::Press => match k.code {
                KeyCode::Enter => break Ok(()),
                KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                    break Err(anyhow::anyhow!("cancelled"));
                }
                KeyCode::Char(ch) => s.push(ch),
                KeyCode::Backspace => {
                    s.pop();
                }
                _ => {}
            },
            Ok(_) => {}
            Err(e) => break Err(e.into()),
        }
    };
    let _ = ratatui::crossterm::terminal::disable_raw_mode();
    eprintln!();
    result.map(|()| s)
}

#[derive(Default)]
struct Ui {
    selected: usize,
    input: String,
    status: String,
    panel: Option<(String, String)>,
    unread: HashMap<UserKey, usize>,
    quit: bool,
}

/// Runs the terminal UI until the user quits.
pub fn run(c: &mut Chat, t: &mut dyn Transport) -> Result<()> {
    let mut terminal = ratatui::try_init()?;
    let result = event_loop(&mut terminal, c, t);
    let _ = ratatui::try_restore();
    result
}

fn contacts(c: &Chat) -> Vec<UserKey> {
    let mut v: Vec<(String, UserKey)> = c
        .contacts()
        .map(|k| (k.name.to_lowercase(), k.user()))
        .collect();
    v.sort();
    v.into_iter().map(|(_, u)| u).collect()
}

fn event_loop(terminal: &mut DefaultTerminal, c: &mut Chat, t: &mut dyn Transport) -> Result<()> {
    let mut ui = Ui {
        status: "Enter sends; /help lists the commands; Esc quits".into(),
        ..Ui::default()
    };
    if c.user().is_none() {
        ui.status = "waiting for the primary device to answer the link request...".into();
    }
    while !ui.quit {
        terminal.draw(|f| draw(f, c, &ui))?;
        if event::poll(Duration::from_millis(100))?
            && let Event::Key(k) = event::read()?
            && k.kind == KeyEventKind::Press
        {
            key(c, t, &mut ui, k.code, k.modifiers);
        }
        while c.pump(t, Duration::ZERO, unix_now())? {}
        let list = contacts(c);
        let current = list.get(ui.selected).copied();
        while let Some(n) = c.poll_notice() {
            match n {
                Notice::Message { conv, .. } if Some(conv) != current => {
                    *ui.unread.entry(conv).or_default() += 1;
                }
                Notice::Linked => {
                    ui.status = "linked: this device sends and receives as its user".into()
                }
                Notice::Revoked => ui.status = "this device was revoked".into(),
                Notice::Contact(u) => {
                    let name = c.contact(&u).map_or_else(String::new, |k| k.name.clone());
                    ui.status = format!("contact {name} added or updated");
                }
                Notice::Dropped(why) => ui.status = format!("dropped a message: {why}"),
                Notice::SendFailed(why) => ui.status = format!("the node: {why}"),
                _ => {}
            }
        }
    }
    Ok(())
}

fn key(c: &mut Chat, t: &mut dyn Transport, ui: &mut Ui, code: KeyCode, mods: KeyModifiers) {
    let n = contacts(c).len();
    match code {
        KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => ui.quit = true,
        KeyCode::Esc if ui.panel.is_some() => ui.panel = None,
        KeyCode::Esc => ui.quit = true,
        KeyCode::Up => ui.selected = ui.selected.saturating_sub(1),
        KeyCode::Down => ui.selected = (ui.selected + 1).min(n.saturating_sub(1)),
        KeyCode::Backspace => {
            ui.input.pop();
        }
        KeyCode::Char(ch) => ui.input.push(ch),
        KeyCode::Enter => {
            let input = std::mem::take(&mut ui.input);
            ui.panel = None;
            if let Err(e) = enter(c, t, ui, input.trim()) {
                ui.status = format!("error: {e}");
            }
        }
        _ => {}
    }
    if let Some(u) = contacts(c).get(ui.selected) {
        ui.unread.remove(u);
    }
}

fn enter(c: &mut Chat, t: &mut dyn Transport, ui: &mut Ui, input: &str) -> Result<()> {
    let current = contacts(c).get(ui.selected).copied();
    let mut words = input.split_whitespace();
    match words.next() {
        None => {}
        Some("/quit") => ui.quit = true,
        Some("/help") => {
            ui.panel = Some((
                "commands".into(),
                "/add <contact code> <name>   add a contact\n/code   your contact code\n\
                 /safety   the safety number with this contact\n/verify   mark this contact \
                 verified (after comparing safety numbers)\n/devices   your devices\n/link   a \
                 code to link a new device (primary only)\n/revoke <device>   revoke a device \
                 (primary only)\n/quit"
                    .into(),
            ))
        }
        Some("/add") => {
            let (Some(code), Some(name)) = (words.next(), words.next()) else {
                anyhow::bail!("/add <contact code> <name>");
            };
            c.add_contact(t, code, name)?;
            if let Some(i) = contacts(c)
                .iter()
                .position(|u| c.contact(u).is_some_and(|k| k.name == name))
            {
                ui.selected = i;
            }
            ui.status = format!("added {name}: compare safety numbers (/safety), then /verify");
        }
        Some("/code") => ui.panel = Some(("your contact code".into(), c.contact_code()?)),
        Some("/safety") => {
            let u = current.ok_or_else(|| anyhow::anyhow!("no contact chosen"))?;
            ui.panel = Some((
                "safety number (the same on both screens means no one sits between you)".into(),
                c.safety_number(&u).unwrap_or_default(),
            ));
        }
        Some("/verify") => {
            let u = current.ok_or_else(|| anyhow::anyhow!("no contact chosen"))?;
            c.verify_contact(&u)?;
            ui.status = "verified".into();
        }
        Some("/devices") => {
            let text = c
                .devices()
                .iter()
                .map(|d| {
                    let me = if d.node_key == c.node_key() {
                        "  (this device)"
                    } else {
                        ""
                    };
                    format!("{}  {}{me}", d.name, &hex(&d.node_key)[..16])
                })
                .collect::<Vec<_>>()
                .join("\n");
            ui.panel = Some(("devices".into(), text));
        }
        Some("/link") => {
            let code = c.link_start(unix_now())?;
            ui.panel = Some((
                "on the new device, within ten minutes".into(),
                format!("mixed chat link {} --name <its name>", code.encode()),
            ));
        }
        Some("/revoke") => {
            let q = words.next().unwrap_or_default().to_ascii_lowercase();
            let hits: Vec<[u8; 32]> = c
                .devices()
                .iter()
                .filter(|d| {
                    d.name.to_ascii_lowercase() == q
                        || (q.len() >= 4 && hex(&d.node_key).starts_with(&q))
                })
                .map(|d| d.node_key)
                .collect();
            let [k] = hits[..] else {
                anyhow::bail!("/revoke <device name>: /devices lists them");
            };
            c.revoke(t, &k)?;
            ui.status = "revoked".into();
        }
        Some(cmd) if cmd.starts_with('/') => anyhow::bail!("no command {cmd}; /help lists them"),
        Some(_) => {
            let u = current
                .ok_or_else(|| anyhow::anyhow!("add a contact first: /add <code> <name>"))?;
            c.send(t, &u, input, None, unix_now())?;
        }
    }
    Ok(())
}

fn draw(f: &mut Frame<'_>, c: &Chat, ui: &Ui) {
    let [main, input, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let [left, right] =
        Layout::horizontal([Constraint::Length(26), Constraint::Min(10)]).areas(main);
    let list = contacts(c);
    let items: Vec<ListItem<'_>> = list
        .iter()
        .map(|u| {
            let k = c.contact(u);
            let name = k.map_or_else(String::new, |k| k.name.clone());
            let mark = if k.is_some_and(|k| k.verified) {
                " ✓"
            } else {
                ""
            };
            let unread = ui
                .unread
                .get(u)
                .map(|n| format!(" ({n})"))
                .unwrap_or_default();
            ListItem::new(format!("{name}{mark}{unread}"))
        })
        .collect();
    let mut state = ListState::default();
    state.select((!list.is_empty()).then(|| ui.selected.min(list.len() - 1)));
    f.render_stateful_widget(
        List::new(items)
            .block(Block::default().borders(Borders::ALL).title("contacts"))
            .highlight_style(Style::default().add_modifier(Modifier::REVERSED)),
        left,
        &mut state,
    );
    let current = list.get(ui.selected);
    let (title, lines): (String, Vec<Line<'_>>) = match current {
        Some(u) => {
            let name = c.contact(u).map_or_else(String::new, |k| k.name.clone());
            let msgs = c.conversation(u);
            let height = right.height.saturating_sub(2) as usize;
            let skip = msgs.len().saturating_sub(height);
            (
                name,
                msgs.iter()
                    .skip(skip)
                    .map(|m| Line::from(line(c, m)))
                    .collect(),
            )
        }
        None => (
            "no contacts yet".into(),
            vec![Line::from(
                "/code shows your contact code; /add <code> <name> adds one",
            )],
        ),
    };
    f.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::default().borders(Borders::ALL).title(title)),
        right,
    );
    f.render_widget(
        Paragraph::new(ui.input.as_str())
            .block(Block::default().borders(Borders::ALL).title("message")),
        input,
    );
    f.render_widget(Paragraph::new(ui.status.as_str()), status);
    if let Some((title, text)) = &ui.panel {
        let [_, mid, _] = Layout::vertical([
            Constraint::Percentage(20),
            Constraint::Percentage(60),
            Constraint::Percentage(20),
        ])
        .areas(f.area());
        f.render_widget(Clear, mid);
        f.render_widget(
            Paragraph::new(text.as_str())
                .wrap(Wrap { trim: false })
                .block(Block::default().borders(Borders::ALL).title(title.as_str())),
            mid,
        );
    }
}
