//! Maintenance windows (blackouts): spans of the week or the day in which no repair write
//! starts. Detection may run inside one; a repairer waiting on a window resumes when it
//! ends.
//!
//! A window is written `"[Day ]HH:MM[:SS]-[Day ]HH:MM[:SS]"` in a time zone: `"22:00-06:00"`
//! every night, `"Sat 22:00-Sun 06:00"` once a week. The start is inside, the end is not; a
//! window whose end is before its start wraps over midnight (or the week's end). Positions
//! are wall-clock times in the zone, so a window follows daylight-saving time; its end is
//! computed as the wall-clock distance from now (an hour off when a DST change falls inside
//! the window).

use chrono::{DateTime, Datelike, Duration, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

const DAY: i64 = 86_400;
const WEEK: i64 = 7 * DAY;

/// One window, as seconds into the day or the week (Monday 00:00 is 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    start: i64,
    end: i64,
    weekly: bool,
    text: String,
}

impl Window {
    /// Parses `"[Day ]HH:MM[:SS]-[Day ]HH:MM[:SS]"`; both ends name a day or neither does.
    pub fn parse(text: &str) -> Result<Window, String> {
        let (a, b) = text
            .split_once('-')
            .ok_or_else(|| format!("blackout {text:?}: expected START-END, e.g. \"22:00-06:00\""))?;
        let (sa, wa) = point(a.trim()).map_err(|e| format!("blackout {text:?}: {e}"))?;
        let (sb, wb) = point(b.trim()).map_err(|e| format!("blackout {text:?}: {e}"))?;
        if wa != wb {
            return Err(format!("blackout {text:?}: name a weekday on both ends or on neither"));
        }
        if sa == sb {
            return Err(format!("blackout {text:?}: the window is empty"));
        }
        Ok(Window {
            start: sa,
            end: sb,
            weekly: wa,
            text: text.to_string(),
        })
    }

    /// The window as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    fn period(&self) -> i64 {
        if self.weekly { WEEK } else { DAY }
    }

    /// Seconds into this window's period of `now`, on the zone's wall clock.
    fn position(&self, now: DateTime<Utc>, tz: Tz) -> i64 {
        let local = tz.from_utc_datetime(&now.naive_utc());
        let day = i64::from(local.num_seconds_from_midnight());
        if self.weekly {
            i64::from(local.weekday().num_days_from_monday()) * DAY + day
        } else {
            day
        }
    }

    /// Whether `now` falls inside the window.
    pub fn is_inside(&self, now: DateTime<Utc>, tz: Tz) -> bool {
        let pos = self.position(now, tz);
        if self.start < self.end {
            self.start <= pos && pos < self.end
        } else {
            pos >= self.start || pos < self.end
        }
    }

    /// When the window that `now` is inside ends; `None` outside it.
    pub fn ends_at(&self, now: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        if !self.is_inside(now, tz) {
            return None;
        }
        let pos = self.position(now, tz);
        let left = (self.end - pos).rem_euclid(self.period());
        let whole = now.with_nanosecond(0).unwrap_or(now);
        Some(whole + Duration::seconds(left))
    }
}

/// `[Day ]HH:MM[:SS]` as seconds into the day (or the week, with a day), and whether a day
/// was named.
fn point(s: &str) -> Result<(i64, bool), String> {
    let (day, clock) = match s.split_once(char::is_whitespace) {
        Some((d, c)) => (Some(weekday(d)?), c.trim()),
        None => (None, s),
    };
    let parts: Vec<&str> = clock.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!("{s:?} is not HH:MM or HH:MM:SS"));
    }
    let num = |p: &str, max: i64| -> Result<i64, String> {
        match p.parse::<i64>() {
            Ok(n) if p.len() == 2 && (0..max).contains(&n) => Ok(n),
            _ => Err(format!("{s:?} is not HH:MM or HH:MM:SS")),
        }
    };
    let (h, m) = (num(parts[0], 24)?, num(parts[1], 60)?);
    let sec = if parts.len() == 3 { num(parts[2], 60)? } else { 0 };
    let secs = h * 3600 + m * 60 + sec;
    Ok(match day {
        Some(d) => (d * DAY + secs, true),
        None => (secs, false),
    })
}

fn weekday(d: &str) -> Result<i64, String> {
    const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    let lower = d.to_ascii_lowercase();
    DAYS.iter()
        .position(|x| lower.len() >= 3 && x.starts_with(&lower[..3]) && (lower.len() == 3 || is_full(&lower)))
        .map(|i| i as i64)
        .ok_or_else(|| format!("{d:?} is not a weekday (Mon..Sun)"))
}

fn is_full(lower: &str) -> bool {
    [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ]
    .contains(&lower)
}

/// The windows of one stage with their time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Blackouts {
    windows: Vec<Window>,
    tz: Tz,
}

impl Default for Blackouts {
    fn default() -> Self {
        Blackouts {
            windows: Vec::new(),
            tz: Tz::UTC,
        }
    }
}

impl Blackouts {
    /// Windows read in `tz`.
    pub fn new(windows: Vec<Window>, tz: Tz) -> Blackouts {
        Blackouts { windows, tz }
    }

    /// The most a throttled repairer sleeps before it looks at the windows again.
    pub const POLL: std::time::Duration = std::time::Duration::from_millis(250);

    /// How long a repairer should wait before its next write may start: `None` outside
    /// every window.
    pub fn wait(&self, now: DateTime<Utc>) -> Option<std::time::Duration> {
        let end = self.ends_at(now)?;
        let left = (end - now).to_std().unwrap_or_default();
        Some(left.clamp(std::time::Duration::from_millis(10), Self::POLL))
    }

    /// No window at all.
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Whether `now` is inside any window.
    pub fn is_inside(&self, now: DateTime<Utc>) -> bool {
        self.windows.iter().any(|w| w.is_inside(now, self.tz))
    }

    /// When writes may start again: `None` when `now` is outside every window, else the end
    /// of the chain of windows `now` is in (windows that touch or overlap count as one).
    pub fn ends_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut at = now;
        let mut moved = false;
        for _ in 0..=self.windows.len() {
            let next = self.windows.iter().filter_map(|w| w.ends_at(at, self.tz)).max();
            match next {
                Some(end) => {
                    at = end;
                    moved = true;
                }
                None => break,
            }
        }
        moved.then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn nightly_window_wraps_midnight() {
        let w = Window::parse("22:00-06:00").unwrap();
        assert!(w.is_inside(utc("2026-12-02T23:00:00Z"), Tz::UTC));
        assert!(w.is_inside(utc("2026-12-02T05:59:59Z"), Tz::UTC));
        assert!(!w.is_inside(utc("2026-12-02T06:00:00Z"), Tz::UTC));
        assert_eq!(
            w.ends_at(utc("2026-12-02T23:00:00Z"), Tz::UTC),
            Some(utc("2026-12-03T06:00:00Z"))
        );
    }

    #[test]
    fn weekly_window_in_a_zone() {
        let w = Window::parse("Sat 22:00-Sun 06:00").unwrap();
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        // Saturday 2026-12-05 21:30 UTC is 22:30 in Berlin.
        assert!(w.is_inside(utc("2026-12-05T21:30:00Z"), berlin));
        assert!(!w.is_inside(utc("2026-12-05T20:30:00Z"), berlin));
        assert_eq!(
            w.ends_at(utc("2026-12-05T21:30:00Z"), berlin),
            Some(utc("2026-12-06T05:00:00Z"))
        );
    }

    #[test]
    fn seconds_and_errors() {
        let w = Window::parse("10:00:05-10:00:10").unwrap();
        assert!(w.is_inside(utc("2026-12-02T10:00:07Z"), Tz::UTC));
        assert!(!w.is_inside(utc("2026-12-02T10:00:10Z"), Tz::UTC));
        for bad in [
            "22:00",
            "25:00-01:00",
            "Sat 22:00-06:00",
            "Xyz 1:00-Sun 02:00",
            "01:00-01:00",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn touching_windows_chain() {
        let b = Blackouts::new(
            vec![
                Window::parse("10:00-11:00").unwrap(),
                Window::parse("11:00-12:00").unwrap(),
            ],
            Tz::UTC,
        );
        assert_eq!(
            b.ends_at(utc("2026-12-02T10:30:00Z")),
            Some(utc("2026-12-02T12:00:00Z"))
        );
        assert_eq!(b.ends_at(utc("2026-12-02T12:30:00Z")), None);
    }
}
