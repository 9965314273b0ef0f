//! `tcptrace top`: a live full-screen view of a running daemon, refreshed
//! every second: per role and port, sockets in the main states and rates,
//! then the processes holding stale sockets. Fits 80×24, and uses a wider
//! terminal for more states; works over SSH.
//! Ports with nothing to show (no socket but listeners, no rate) are
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

/// A column of the port table: its header, what the header abbreviates
/// (for the legend), its width, whether it waits for a wider terminal, and
/// how a row sorts and shows in it.
struct Column {
    header: &'static str,
    meaning: Option<&'static str>,
    width: u16,
    wide: bool,
    value: fn(&PortRow) -> Value,
}

/// A cell's value; each kind is shown one way in every column.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum Value {
    Text(String),
    /// A port label: in numeric order, "other" last.
    Port(u32, String),
    /// Sockets: whole numbers.
    Count(u64),
    /// Listening sockets: shown as a count, but a listener alone does not
    /// make a port busy.
    Listeners(u64),
    /// Per second: one decimal, none from 100 on.
    Rate(f64),
    /// An age in seconds, as `3.7m`.
    Age(f64),
}

impl Value {
    /// Nothing is happening: a zero, or no number at all.
    fn is_idle(&self) -> bool {
        match *self {
            Self::Text(_) | Self::Port(..) | Self::Listeners(_) => true,
            Self::Count(n) => n == 0,
            Self::Rate(n) | Self::Age(n) => n == 0.0,
        }
    }

    fn show(self) -> String {
        match self {
            Self::Text(text) | Self::Port(_, text) => text,
            Self::Count(n) | Self::Listeners(n) => n.to_string(),
            Self::Rate(n) if n >= 100.0 => format!("{n:.0}"),
            Self::Rate(n) => format!("{n:.1}"),
            Self::Age(seconds) => short_age(seconds),
        }
    }
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
    /// Every number of its row, in every column, is 0, listeners aside.
    fn is_idle(&self) -> bool {
        COLUMNS.iter().all(|column| (column.value)(self).is_idle())
    }

    fn count(&self, state: &str) -> Value {
        Value::Count(self.summary.sockets.get(state).copied().unwrap_or(0))
    }
}

const fn column(
    header: &'static str,
    meaning: Option<&'static str>,
    width: u16,
    value: fn(&PortRow) -> Value,
) -> Column {
    Column {
        header,
        meaning,
        width,
        wide: false,
        value,
    }
}

/// Shown when the terminal has room, in this order of priority.
const fn wide(header: &'static str, width: u16, value: fn(&PortRow) -> Value) -> Column {
    Column {
        header,
        meaning: None,
        width,
        wide: true,
        value,
    }
}

/// Every column, in screen order. Those not `wide` fit 80 columns.
const COLUMNS: [Column; 17] = [
    column("ROLE", None, 6, |r| Value::Text(r.summary.role.clone())),
    column("PORT", None, 5, |r| {
        Value::Port(port_order(&r.summary.port), r.summary.port.clone())
    }),
    column("ESTAB", None, 5, |r| r.count("ESTABLISHED")),
    wide("SYN_S", 5, |r| r.count("SYN_SENT")),
    wide("SYN_R", 5, |r| r.count("SYN_RECV")),
    wide("FIN_W1", 6, |r| r.count("FIN_WAIT1")),
    column("TIME_W", None, 6, |r| r.count("TIME_WAIT")),
    column("CLOSE_W", None, 7, |r| r.count("CLOSE_WAIT")),
    column("FIN_W2", None, 6, |r| r.count("FIN_WAIT2")),
    column("LAST_A", None, 6, |r| r.count("LAST_ACK")),
    wide("CLOSING", 7, |r| r.count("CLOSING")),
    wide("LISTEN", 6, |r| {
        Value::Listeners(r.summary.sockets.get("LISTEN").copied().unwrap_or(0))
    }),
    column("TR/s", Some("state changes/s"), 6, |r| {
        Value::Rate(r.transitions_per_s)
    }),
    column("RSTo/s", Some("RSTs sent/s"), 6, |r| {
        Value::Rate(r.resets_sent_per_s)
    }),
    column("RSTi/s", Some("RSTs received/s"), 6, |r| {
        Value::Rate(r.resets_received_per_s)
    }),
    column("KA/s", Some("keepalive probes/s"), 4, |r| {
        Value::Rate(r.keepalive_per_s)
    }),
    column("OLD_CW", Some("oldest CLOSE_WAIT"), 6, |r| {
        Value::Age(r.summary.oldest_close_wait_seconds)
    }),
];

/// The columns that fit `width`: every narrow one, then wide ones in
/// order while they fit; as indexes into [`COLUMNS`], in screen order.
fn columns_for(width: u16) -> Vec<usize> {
    let used = |columns: &[usize]| -> u16 {
        columns.iter().map(|&i| COLUMNS[i].width + 1).sum::<u16>() - 1
    };
    let mut shown: Vec<usize> = (0..COLUMNS.len()).filter(|&i| !COLUMNS[i].wide).collect();
    for i in (0..COLUMNS.len()).filter(|&i| COLUMNS[i].wide) {
        let mut wider = shown.clone();
        wider.push(i);
        wider.sort_unstable();
        if used(&wider) <= width {
            shown = wider;
        }
    }
    shown
}

/// The legend of the shown columns' abbreviations, packed into lines of
/// `width`.
fn legend(columns: &[usize], width: u16) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for column in columns.iter().map(|&i| &COLUMNS[i]) {
        let Some(meaning) = column.meaning else {
            continue;
        };
        let item = format!("{} {meaning}", column.header);
        match lines.last_mut() {
            Some(line) if line.chars().count() + 3 + item.chars().count() <= usize::from(width) => {
                line.push_str(" · ");
                line.push_str(&item);
            }
            _ => lines.push(item),
        }
    }
    lines
}

/// The column sorted by at start: CLOSE_WAIT, the leak.
fn default_sort() -> usize {
    COLUMNS
        .iter()
        .position(|c| c.header == "CLOSE_W")
        .unwrap_or(0)
}

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
    /// The terminal's width as of the last draw: which columns show.
    width: u16,
}

pub async fn run(args: TopArgs) -> Result<(), Error> {
    // Fail before taking over the terminal if nothing answers.
    let daemon = super::daemon(&args.client)?;
    let first: Overview = client::get_json(&daemon, OVERVIEW_PATH).await?;
    let mut view = View {
        rows: Vec::new(),
        overview: Overview::default(),
        previous: None,
        sort: default_sort(),
        descending: true,
        status: String::new(),
        show_idle: false,
        scroll: 0,
        width: 80,
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
        view.width = terminal.size()?.width;
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
            KeyCode::Left | KeyCode::Char('h') => self.move_sort(false),
            KeyCode::Right | KeyCode::Char('l') | KeyCode::Tab => self.move_sort(true),
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

    /// Sorts by the next shown column to the right (or left), around.
    fn move_sort(&mut self, right: bool) {
        let shown = columns_for(self.width);
        let at = shown.iter().position(|&i| i == self.sort).unwrap_or(0);
        let next = if right { at + 1 } else { at + shown.len() - 1 };
        self.sort = shown[next % shown.len()];
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
        let columns = columns_for(frame.area().width);
        let legend = legend(&columns, frame.area().width);
        let stale_rows = u16::try_from(self.overview.stale.len().clamp(1, 6)).unwrap_or(6);
        let [header, ports, stale, legend_area, help] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Min(4),
            Constraint::Length(stale_rows + 2),
            Constraint::Length(u16::try_from(legend.len()).unwrap_or(1)),
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
        frame.render_widget(
            self.port_table(&columns, usize::from(ports.height), bold),
            ports,
        );

        frame.render_widget(self.stale_table(bold), stale);

        frame.render_widget(
            Paragraph::new(legend.into_iter().map(Line::from).collect::<Vec<_>>()),
            legend_area,
        );

        frame.render_widget(
            Paragraph::new(if self.show_idle {
                "q quit  ←/→ sort  r reverse  ↑/↓ scroll  z hide idle ports"
            } else {
                "q quit  ←/→ sort  r reverse  ↑/↓ scroll  z show idle ports"
            }),
            help,
        );
    }

    /// The port rows that fit `height` lines, the header included, in
    /// `columns`.
    fn port_table(&self, columns: &[usize], height: usize, bold: Style) -> Table<'_> {
        // The sort column is shown reversed; its direction is in the title.
        let headers = columns.iter().map(|&i| {
            let look = if i == self.sort {
                bold.add_modifier(Modifier::REVERSED)
            } else {
                bold
            };
            Cell::from(COLUMNS[i].header).style(look)
        });
        let (shown, more) = self.window(height.saturating_sub(1));
        let mut rows: Vec<Row> = shown
            .into_iter()
            .map(|row| {
                Row::new(
                    columns
                        .iter()
                        .map(|&i| Cell::from((COLUMNS[i].value)(row).show())),
                )
            })
            .collect();
        if more > 0 {
            rows.push(Row::new([Cell::from(format!("+{more} more (↑/↓)"))]));
        }
        let widths: Vec<Constraint> = columns
            .iter()
            .map(|&i| Constraint::Length(COLUMNS[i].width))
            .collect();
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
            sort: default_sort(),
            descending: true,
            status: String::new(),
            show_idle: false,
            scroll: 0,
            width: 80,
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
        view.sort = default_sort();
        view.sort_rows();
        let ports: Vec<&str> = view.rows.iter().map(|r| r.summary.port.as_str()).collect();
        assert_eq!(ports, ["443", "8080", "10091", "other"]);
    }

    /// 80 columns hold the narrow columns; a wider terminal adds the
    /// others, in order of priority; → and ← move among those shown.
    #[test]
    fn wider_terminals_show_more_columns() {
        let headers = |width| -> Vec<&str> {
            columns_for(width)
                .into_iter()
                .map(|i| COLUMNS[i].header)
                .collect()
        };
        let narrow = headers(80);
        assert_eq!(
            narrow,
            [
                "ROLE", "PORT", "ESTAB", "TIME_W", "CLOSE_W", "FIN_W2", "LAST_A", "TR/s", "RSTo/s",
                "RSTi/s", "KA/s", "OLD_CW"
            ]
        );
        let width_of = |headers: &[&str]| -> usize {
            headers
                .iter()
                .map(|h| usize::from(COLUMNS.iter().find(|c| c.header == *h).unwrap().width) + 1)
                .sum::<usize>()
                - 1
        };
        assert_eq!(width_of(&narrow), 80);
        assert_eq!(
            headers(86),
            [&narrow[..3], &["SYN_S"], &narrow[3..]].concat()
        );
        let all = headers(200);
        assert_eq!(all.len(), COLUMNS.len());
        assert_eq!(width_of(&all), 114);
        assert_eq!(headers(113).len(), COLUMNS.len() - 1, "LISTEN waits");

        let mut view = view();
        view.sort = default_sort();
        view.key(KeyCode::Left);
        assert_eq!(COLUMNS[view.sort].header, "TIME_W", "at 80: FIN_W1 hidden");
        view.width = 200;
        view.key(KeyCode::Left);
        assert_eq!(COLUMNS[view.sort].header, "FIN_W1");
    }

    /// The legend explains the shown abbreviations that are not states, on
    /// as few lines as fit.
    #[test]
    fn legend_packs_the_abbreviations() {
        assert_eq!(
            legend(&columns_for(80), 80),
            [
                "TR/s state changes/s · RSTo/s RSTs sent/s · RSTi/s RSTs received/s",
                "KA/s keepalive probes/s · OLD_CW oldest CLOSE_WAIT",
            ]
        );
        assert_eq!(legend(&columns_for(200), 200).len(), 1);
    }

    #[test]
    fn numbers_show_one_way_per_kind() {
        assert_eq!(Value::Count(12).show(), "12");
        assert_eq!(Value::Rate(0.0).show(), "0.0");
        assert_eq!(Value::Rate(2.0).show(), "2.0");
        assert_eq!(Value::Rate(2.46).show(), "2.5");
        assert_eq!(Value::Rate(1234.4).show(), "1234");
        assert_eq!(Value::Age(222.0).show(), "3.7m");
        assert_eq!(Value::Age(0.0).show(), "-");
    }
}
