//! `tcptrace top`: a live full-screen view of a running daemon, refreshed
//! every second: per role and port, sockets in the main states and rates,
//! then the processes holding stale sockets. Fits 80×24; works over SSH.
//! Ports with nothing to show (no socket in the shown states, no rate) are
//! hidden until `z`; rows beyond the screen scroll with ↑/↓.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Paragraph, Row, Table},
};

use crate::{
    cli::TopArgs,
    cli::commands::Error,
    export::api::{OVERVIEW_PATH, Overview, PortSummary},
    export::client,
    support::duration::short_age,
};

/// A column of the port table: its header, width, and how a row sorts and
/// shows in it.
struct Column {
    header: &'static str,
    width: u16,
    value: fn(&PortRow) -> Value,
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Value {
    Text(String),
    Number(f64),
    /// A port label: in numeric order, "other" last.
    Port(u32, String),
}

fn port_order(port: &str) -> u32 {
    port.parse().unwrap_or(u32::MAX)
}

/// One role and port as shown: counts now and rates since the last refresh.
#[derive(Debug, Clone)]
struct PortRow {
    summary: PortSummary,
    transitions_per_s: f64,
    resets_sent_per_s: f64,
    resets_received_per_s: f64,
    keepalive_per_s: f64,
}

impl PortRow {
    /// Every number of its row is 0.
    fn is_idle(&self) -> bool {
        COLUMNS
            .iter()
            .all(|column| !matches!((column.value)(self), Value::Number(n) if n != 0.0))
    }

    fn count(&self, state: &str) -> Value {
        #[expect(clippy::cast_precision_loss, reason = "socket counts")]
        Value::Number(self.summary.sockets.get(state).copied().unwrap_or(0) as f64)
    }
}

const COLUMNS: [Column; 12] = [
    Column {
        header: "ROLE",
        width: 6,
        value: |r| Value::Text(r.summary.role.clone()),
    },
    Column {
        header: "PORT",
        width: 5,
        value: |r| Value::Port(port_order(&r.summary.port), r.summary.port.clone()),
    },
    Column {
        header: "ESTAB",
        width: 5,
        value: |r| r.count("ESTABLISHED"),
    },
    Column {
        header: "TIME_W",
        width: 6,
        value: |r| r.count("TIME_WAIT"),
    },
    Column {
        header: "CLOSE_W",
        width: 7,
        value: |r| r.count("CLOSE_WAIT"),
    },
    Column {
        header: "FIN_W2",
        width: 6,
        value: |r| r.count("FIN_WAIT2"),
    },
    Column {
        header: "LAST_A",
        width: 6,
        value: |r| r.count("LAST_ACK"),
    },
    Column {
        header: "TR/s",
        width: 6,
        value: |r| Value::Number(r.transitions_per_s),
    },
    Column {
        header: "RSTo/s",
        width: 6,
        value: |r| Value::Number(r.resets_sent_per_s),
    },
    Column {
        header: "RSTi/s",
        width: 6,
        value: |r| Value::Number(r.resets_received_per_s),
    },
    Column {
        header: "KA/s",
        width: 4,
        value: |r| Value::Number(r.keepalive_per_s),
    },
    Column {
        header: "OLD_CW",
        width: 6,
        value: |r| Value::Number(r.summary.oldest_close_wait_seconds),
    },
];

/// The column sorted by at start: CLOSE_WAIT, the leak.
const DEFAULT_SORT: usize = 4;

type Totals = HashMap<(String, String), PortSummary>;

struct View {
    rows: Vec<PortRow>,
    overview: Overview,
    /// The last refresh: when, and the totals by (role, port), for rates.
    previous: Option<(Instant, Totals)>,
    sort: usize,
    descending: bool,
    status: String,
    /// Shows the rows whose every number is 0.
    show_idle: bool,
    /// The first port row shown.
    scroll: usize,
}

pub async fn run(args: TopArgs) -> Result<(), Error> {
    // Fail before taking over the terminal if nothing answers.
    let daemon = super::daemon(&args.client)?;
    let first: Overview = client::get_json(&daemon, OVERVIEW_PATH).await?;
    let mut view = View {
        rows: Vec::new(),
        overview: Overview::default(),
        previous: None,
        sort: DEFAULT_SORT,
        descending: true,
        status: String::new(),
        show_idle: false,
        scroll: 0,
    };
    view.update(first, Instant::now());

    let mut terminal = ratatui::try_init()?;
    let result = show(&mut terminal, &mut view, &args, &daemon).await;
    ratatui::restore();
    result
}

async fn show(
    terminal: &mut DefaultTerminal,
    view: &mut View,
    args: &TopArgs,
    daemon: &client::Daemon,
) -> Result<(), Error> {
    let (keys, mut key_rx) = tokio::sync::mpsc::channel(16);
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || read_keys(&keys, &stop))
    };
    let mut refresh = tokio::time::interval(args.interval);
    refresh.reset(); // the first overview is already in
    let result = loop {
        terminal.draw(|frame| view.draw(frame, args))?;
        tokio::select! {
            _ = refresh.tick() => match client::get_json::<Overview>(daemon, OVERVIEW_PATH).await {
                Ok(overview) => view.update(overview, Instant::now()),
                Err(error) => view.status = error.to_string(),
            },
            key = key_rx.recv() => match key {
                None | Some(KeyCode::Char('q') | KeyCode::Esc) => break Ok(()),
                Some(key) => view.key(key),
            },
        }
    };
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    result
}

/// Forwards key presses until told to stop (checked every 100 ms) or the
/// receiver is gone; Ctrl-C arrives as a key in raw mode and means quit.
fn read_keys(keys: &tokio::sync::mpsc::Sender<KeyCode>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match event::poll(Duration::from_millis(100)) {
            Ok(false) => {}
            Ok(true) => {
                let Ok(Event::Key(key)) = event::read() else {
                    continue;
                };
                if key.kind != KeyEventKind::Press {
                    continue;
                }
                let code = if key.modifiers.contains(KeyModifiers::CONTROL)
                    && key.code == KeyCode::Char('c')
                {
                    KeyCode::Char('q')
                } else {
                    key.code
                };
                if keys.blocking_send(code).is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = keys.blocking_send(KeyCode::Char('q'));
                return;
            }
        }
    }
}

impl View {
    fn update(&mut self, overview: Overview, now: Instant) {
        let by_key = |ports: &[PortSummary]| {
            ports
                .iter()
                .map(|p| ((p.role.clone(), p.port.clone()), p.clone()))
                .collect::<HashMap<_, _>>()
        };
        self.rows = overview
            .ports
            .iter()
            .map(|summary| {
                let before = self.previous.as_ref().and_then(|(at, ports)| {
                    let seconds = now.duration_since(*at).as_secs_f64();
                    Some((
                        seconds,
                        ports.get(&(summary.role.clone(), summary.port.clone()))?,
                    ))
                });
                #[expect(clippy::cast_precision_loss, reason = "counter deltas")]
                let rate = |now: u64, then: fn(&PortSummary) -> u64| {
                    before.map_or(0.0, |(seconds, before)| {
                        now.saturating_sub(then(before)) as f64 / seconds.max(1e-3)
                    })
                };
                PortRow {
                    transitions_per_s: rate(summary.transitions, |p| p.transitions),
                    resets_sent_per_s: rate(summary.resets_sent, |p| p.resets_sent),
                    resets_received_per_s: rate(summary.resets_received, |p| p.resets_received),
                    keepalive_per_s: rate(summary.keepalive_probes, |p| p.keepalive_probes),
                    summary: summary.clone(),
                }
            })
            .collect();
        self.previous = Some((now, by_key(&overview.ports)));
        self.overview = overview;
        self.status.clear();
        self.sort_rows();
    }

    fn key(&mut self, key: KeyCode) {
        match key {
            KeyCode::Left | KeyCode::Char('h') => {
                self.sort = (self.sort + COLUMNS.len() - 1) % COLUMNS.len();
            }
            KeyCode::Right | KeyCode::Char('l') | KeyCode::Tab => {
                self.sort = (self.sort + 1) % COLUMNS.len();
            }
            KeyCode::Char('r') => self.descending = !self.descending,
            KeyCode::Char('z') => {
                self.show_idle = !self.show_idle;
                self.scroll = 0;
            }
            KeyCode::Down | KeyCode::Char('j') => self.scroll = self.scroll.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.scroll = self.scroll.saturating_sub(1),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_sub(10),
            _ => return,
        }
        // Never past the last row, so that ↑ answers at once.
        self.scroll = self.scroll.min(self.visible_rows().len());
        self.sort_rows();
    }

    /// The rows to show, in order: all, or those with a number that is not 0.
    fn visible_rows(&self) -> Vec<&PortRow> {
        self.rows
            .iter()
            .filter(|row| self.show_idle || !row.is_idle())
            .collect()
    }

    /// The rows that fit `lines` (the header aside), from the scroll
    /// position, and how many more there are below and above; the last line
    /// says "+N more" when some do not fit.
    fn window(&self, lines: usize) -> (Vec<&PortRow>, usize) {
        let rows = self.visible_rows();
        if rows.len() <= lines {
            return (rows, 0);
        }
        let shown = lines.saturating_sub(1);
        let first = self.scroll.min(rows.len() - shown);
        let hidden = rows.len() - shown;
        (rows.into_iter().skip(first).take(shown).collect(), hidden)
    }

    fn sort_rows(&mut self) {
        let column = &COLUMNS[self.sort];
        self.rows.sort_by(|a, b| {
            let order = (column.value)(a)
                .partial_cmp(&(column.value)(b))
                .unwrap_or(std::cmp::Ordering::Equal);
            let order = if self.descending {
                order.reverse()
            } else {
                order
            };
            // Ties in a stable, readable order.
            order.then_with(|| {
                (&a.summary.role, port_order(&a.summary.port))
                    .cmp(&(&b.summary.role, port_order(&b.summary.port)))
            })
        });
    }

    fn draw(&self, frame: &mut Frame, args: &TopArgs) {
        let stale_rows = u16::try_from(self.overview.stale.len().clamp(1, 6)).unwrap_or(6);
        let [header, ports, stale, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(stale_rows + 2),
            Constraint::Length(1),
        ])
        .areas(frame.area());

        let lost = match self.overview.events_lost {
            0 => String::new(),
            lost => format!("  {lost} events lost"),
        };
        let direction = if self.descending { "▼" } else { "▲" };
        let title = if self.status.is_empty() {
            format!(
                "tcptrace top  {}  every {:?}  sort {}{direction}{lost}",
                args.client.address, args.interval, COLUMNS[self.sort].header
            )
        } else {
            format!("tcptrace top  {}", self.status)
        };
        frame.render_widget(
            Paragraph::new(title).style(Style::new().add_modifier(Modifier::BOLD)),
            header,
        );

        let bold = Style::new().add_modifier(Modifier::BOLD);
        frame.render_widget(self.port_table(usize::from(ports.height), bold), ports);

        frame.render_widget(self.stale_table(bold), stale);

        frame.render_widget(
            Paragraph::new(if self.show_idle {
                "q quit  ←/→ sort  r reverse  ↑/↓ scroll  z hide idle ports"
            } else {
                "q quit  ←/→ sort  r reverse  ↑/↓ scroll  z show idle ports"
            }),
            help,
        );
    }

    /// The port rows that fit `height` lines, the header included.
    fn port_table(&self, height: usize, bold: Style) -> Table<'_> {
        // The sort column is shown reversed; its direction is in the title.
        let headers = COLUMNS.iter().enumerate().map(|(i, column)| {
            let look = if i == self.sort {
                bold.add_modifier(Modifier::REVERSED)
            } else {
                bold
            };
            Cell::from(column.header).style(look)
        });
        let (shown, more) = self.window(height.saturating_sub(1));
        let mut rows: Vec<Row> = shown
            .into_iter()
            .map(|row| {
                Row::new(COLUMNS.iter().map(|column| {
                    Cell::from(match (column.value)(row) {
                        Value::Text(text) | Value::Port(_, text) => text,
                        Value::Number(n) if column.header == "OLD_CW" => short_age(n),
                        // Whole numbers, and rates of 100/s and more, without
                        // decimals: the columns are narrow.
                        Value::Number(n) if n.fract() == 0.0 || n >= 100.0 => format!("{n:.0}"),
                        Value::Number(n) => format!("{n:.1}"),
                    })
                }))
            })
            .collect();
        if more > 0 {
            rows.push(Row::new([Cell::from(format!("+{more} more (↑/↓)"))]));
        }
        let widths = COLUMNS.map(|c| Constraint::Length(c.width));
        Table::new(rows, widths)
            .header(Row::new(headers))
            .column_spacing(1)
    }

    /// The stale groups, one row each, with their owner and its container.
    fn stale_table(&self, bold: Style) -> Table<'_> {
        let stale_rows = self.overview.stale.iter().map(|group| {
            let pids: Vec<String> = group.pids.iter().map(u32::to_string).collect();
            Row::new([
                Cell::from(group.process.clone()),
                Cell::from(group.place()),
                Cell::from(pids.join(",")),
                Cell::from(group.state.clone()),
                Cell::from(group.role.clone()),
                Cell::from(group.port.clone()),
                Cell::from(group.sockets.to_string()),
                Cell::from(short_age(group.oldest_seconds)),
            ])
        });
        let stale_title = if self.overview.stale.is_empty() {
            "Stale sockets: none".to_owned()
        } else {
            "Stale sockets by owner".to_owned()
        };
        Table::new(
            stale_rows,
            [
                Constraint::Length(14),
                Constraint::Length(14),
                Constraint::Length(8),
                Constraint::Length(10),
                Constraint::Length(6),
                Constraint::Length(5),
                Constraint::Length(7),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new([
                "PROCESS",
                "CONTAINER",
                "PIDS",
                "STATE",
                "ROLE",
                "PORT",
                "SOCKETS",
                "OLDEST",
            ])
            .style(bold),
        )
        .block(ratatui::widgets::Block::new().title(Line::from(stale_title).style(bold)))
        .column_spacing(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(port: &str, close_wait: u64, transitions: u64) -> PortSummary {
        PortSummary {
            role: "server".into(),
            port: port.into(),
            sockets: [("CLOSE_WAIT".to_owned(), close_wait)]
                .into_iter()
                .collect(),
            transitions,
            ..PortSummary::default()
        }
    }

    fn view() -> View {
        View {
            rows: Vec::new(),
            overview: Overview::default(),
            previous: None,
            sort: DEFAULT_SORT,
            descending: true,
            status: String::new(),
            show_idle: false,
            scroll: 0,
        }
    }

    /// Ports with nothing to show wait for `z`; rows beyond the screen
    /// leave a "+N more" line and scroll.
    #[test]
    fn idle_rows_hide_and_long_lists_scroll() {
        let mut view = view();
        let mut ports: Vec<PortSummary> = (1..=10).map(|i| summary(&i.to_string(), i, 0)).collect();
        ports.push(summary("other", 0, 0));
        view.update(
            Overview {
                ports,
                ..Overview::default()
            },
            Instant::now(),
        );
        assert_eq!(view.visible_rows().len(), 10, "\"other\" is idle");
        view.key(KeyCode::Char('z'));
        assert_eq!(view.visible_rows().len(), 11);
        view.key(KeyCode::Char('z'));

        let port_list = |rows: Vec<&PortRow>| -> Vec<String> {
            rows.iter().map(|r| r.summary.port.clone()).collect()
        };
        // Most CLOSE_WAIT first: 10 … 1. Four lines: three rows and "+7".
        let (shown, more) = view.window(4);
        assert_eq!(
            (port_list(shown), more),
            (vec!["10".into(), "9".into(), "8".into()], 7)
        );
        for _ in 0..20 {
            view.key(KeyCode::Down);
        }
        let (shown, _) = view.window(4);
        assert_eq!(
            port_list(shown),
            ["3", "2", "1"],
            "scrolled to the end, no further"
        );
        let (shown, more) = view.window(10);
        assert_eq!((shown.len(), more), (10, 0), "all fit");
    }

    #[test]
    fn rates_and_sorting() {
        let mut view = view();
        let start = Instant::now();
        let overview = |a, b| Overview {
            ports: vec![summary("443", 3, a), summary("80", 9, b)],
            ..Overview::default()
        };
        view.update(overview(100, 10), start);
        view.update(overview(300, 20), start + Duration::from_secs(2));
        let ports: Vec<&str> = view.rows.iter().map(|r| r.summary.port.as_str()).collect();
        assert_eq!(ports, ["80", "443"], "most CLOSE_WAIT first");
        assert!((view.rows[1].transitions_per_s - 100.0).abs() < 1.0);
        assert!((view.rows[0].transitions_per_s - 5.0).abs() < 0.1);

        view.key(KeyCode::Right); // FIN_W2: a tie, broken by port
        view.key(KeyCode::Right);
        view.key(KeyCode::Right); // TR/s
        assert_eq!(COLUMNS[view.sort].header, "TR/s");
        assert_eq!(view.rows[0].summary.port, "443");
        view.key(KeyCode::Char('r'));
        assert_eq!(view.rows[0].summary.port, "80");
    }

    /// Ports sort as numbers, "other" after them.
    #[test]
    fn ports_sort_numerically() {
        let mut view = view();
        let overview = Overview {
            ports: vec![
                summary("other", 1, 0),
                summary("10091", 1, 0),
                summary("8080", 1, 0),
                summary("443", 1, 0),
            ],
            ..Overview::default()
        };
        view.update(overview, Instant::now());
        view.sort = COLUMNS.iter().position(|c| c.header == "PORT").unwrap();
        view.descending = false;
        view.sort_rows();
        let ports: Vec<&str> = view.rows.iter().map(|r| r.summary.port.as_str()).collect();
        assert_eq!(ports, ["443", "8080", "10091", "other"]);
        // Ties of another column too.
        view.sort = DEFAULT_SORT;
        view.sort_rows();
        let ports: Vec<&str> = view.rows.iter().map(|r| r.summary.port.as_str()).collect();
        assert_eq!(ports, ["443", "8080", "10091", "other"]);
    }

    /// The whole view fits an 80-column terminal.
    #[test]
    fn fits_80_columns() {
        let spacing = u16::try_from(COLUMNS.len() - 1).unwrap();
        let table: u16 = COLUMNS.iter().map(|c| c.width).sum::<u16>() + spacing;
        assert!(table <= 80, "{table} columns");
    }
}
