//! Maintenance windows: weekly periods, in UTC, during which a node may reboot into an
//! update.
//!
//! A window opens on each of its days at a start time and stays open for a length, which
//! may run past midnight (Saturday 23:00 for 3 hours closes Sunday 02:00). Time is plain
//! seconds since the Unix epoch, so the arithmetic has no time zone and no clock in it.

/// Seconds in a day.
const DAY: i64 = 86_400;
/// Minutes in a week: the longest window.
pub const WEEK_MINUTES: u32 = 7 * 24 * 60;

/// Day names in the order of [`Window`]'s day bits: Monday is bit 0.
pub const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// A weekly reboot window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    days: u8,
    start_minute: u32,
    length_minutes: u32,
}

/// Why a window cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// No day names a day of the week.
    #[error("the window has no days: give at least one of mon, tue, wed, thu, fri, sat, sun")]
    NoDays,
    /// A day name is not one of [`DAY_NAMES`].
    #[error("{0:?} is not a day: use mon, tue, wed, thu, fri, sat or sun")]
    UnknownDay(String),
    /// The start is not `HH:MM` on a 24-hour clock.
    #[error("{0:?} is not a start time: give HH:MM in UTC, 00:00 to 23:59")]
    BadStart(String),
    /// The length is zero or longer than a week.
    #[error("{0} minutes is not a window length: give 1 to {WEEK_MINUTES} minutes")]
    BadLength(u32),
}

impl Window {
    /// A window open on `days` (names from [`DAY_NAMES`]) from `start` (`HH:MM`, UTC) for
    /// `length_minutes`.
    pub fn new(days: &[String], start: &str, length_minutes: u32) -> Result<Window, WindowError> {
        let mut mask = 0u8;
        for day in days {
            let index = DAY_NAMES
                .iter()
                .position(|name| name.eq_ignore_ascii_case(day))
                .ok_or_else(|| WindowError::UnknownDay(day.clone()))?;
            mask |= 1 << index;
        }
        if mask == 0 {
            return Err(WindowError::NoDays);
        }
        let start_minute = parse_start(start)?;
        if length_minutes == 0 || length_minutes > WEEK_MINUTES {
            return Err(WindowError::BadLength(length_minutes));
        }
        Ok(Window {
            days: mask,
            start_minute,
            length_minutes,
        })
    }

    /// The openings that can matter around `day` (days since the epoch): each opening on a
    /// window day from a week before `day` to a week after it, as (start, end) seconds.
    fn openings_around(&self, day: i64) -> impl Iterator<Item = (i64, i64)> + '_ {
        (day - 7..=day + 7).filter_map(move |candidate| {
            // 1970-01-01 was a Thursday, day 3 counting from Monday.
            let weekday = (candidate + 3).rem_euclid(7);
            (self.days & (1 << weekday) != 0).then(|| {
                let start = candidate * DAY + i64::from(self.start_minute) * 60;
                (start, start + i64::from(self.length_minutes) * 60)
            })
        })
    }

    /// True when the window is open at `now` (Unix seconds).
    pub fn is_open(&self, now: i64) -> bool {
        self.openings_around(now.div_euclid(DAY))
            .any(|(start, end)| start <= now && now < end)
    }

    /// The first moment at or after `now` when the window is open.
    pub fn next_open(&self, now: i64) -> i64 {
        if self.is_open(now) {
            return now;
        }
        self.openings_around(now.div_euclid(DAY))
            .map(|(start, _)| start)
            .filter(|&start| start >= now)
            .min()
            // A window has a day, so one opens within the next seven days.
            .unwrap_or(now)
    }

    /// The window in the words of the config: `sat,sun 02:00 for 120 min (UTC)`.
    pub fn describe(&self) -> String {
        let days: Vec<&str> = DAY_NAMES
            .iter()
            .enumerate()
            .filter(|(index, _)| self.days & (1 << index) != 0)
            .map(|(_, name)| *name)
            .collect();
        format!(
            "{} {:02}:{:02} UTC for {} min",
            days.join(","),
            self.start_minute / 60,
            self.start_minute % 60,
            self.length_minutes
        )
    }
}

/// Parses `HH:MM` (24-hour clock) into minutes after midnight.
pub fn parse_start(text: &str) -> Result<u32, WindowError> {
    let bad = || WindowError::BadStart(text.to_owned());
    let (hours, minutes) = text.split_once(':').ok_or_else(bad)?;
    if hours.is_empty() || hours.len() > 2 || minutes.len() != 2 {
        return Err(bad());
    }
    let hours: u32 = hours.parse().map_err(|_| bad())?;
    let minutes: u32 = minutes.parse().map_err(|_| bad())?;
    if hours > 23 || minutes > 59 {
        return Err(bad());
    }
    Ok(hours * 60 + minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-21, a Saturday, at 00:00 UTC.
    const SATURDAY: i64 = 1_795_219_200;

    fn window(days: &[&str], start: &str, minutes: u32) -> Window {
        let days: Vec<String> = days.iter().map(|day| day.to_string()).collect();
        Window::new(&days, start, minutes).unwrap()
    }

    #[test]
    fn the_epoch_arithmetic_knows_the_weekday() {
        // Saturday 02:30 is inside "sat 02:00 for 60 min", and Sunday 02:30 is not.
        let weekend = window(&["sat"], "02:00", 60);
        assert!(weekend.is_open(SATURDAY + 2 * 3600 + 1800));
        assert!(!weekend.is_open(SATURDAY + DAY + 2 * 3600 + 1800));
        assert!(
            !weekend.is_open(SATURDAY + 3 * 3600),
            "the end is exclusive"
        );
        assert!(
            weekend.is_open(SATURDAY + 2 * 3600),
            "the start is inclusive"
        );
    }

    #[test]
    fn a_window_can_run_past_midnight_and_past_the_week() {
        let late = window(&["sun"], "23:00", 180);
        let sunday = SATURDAY + DAY;
        assert!(late.is_open(sunday + 23 * 3600 + 60));
        // Monday 01:30 is still Sunday's window.
        assert!(late.is_open(sunday + DAY + 3600 + 1800));
        assert!(!late.is_open(sunday + DAY + 2 * 3600));
        let always = window(&["mon"], "00:00", WEEK_MINUTES);
        for hour in 0..24 * 14 {
            assert!(always.is_open(SATURDAY + hour * 3600));
        }
    }

    #[test]
    fn the_next_opening_is_the_nearest_start() {
        let weekdays = window(&["mon", "tue", "wed", "thu", "fri"], "04:00", 30);
        // From Saturday noon, the next opening is Monday 04:00.
        let monday_four = SATURDAY + 2 * DAY + 4 * 3600;
        assert_eq!(weekdays.next_open(SATURDAY + 12 * 3600), monday_four);
        assert_eq!(weekdays.next_open(monday_four + 60), monday_four + 60);
        assert_eq!(
            weekdays.describe(),
            "mon,tue,wed,thu,fri 04:00 UTC for 30 min"
        );
    }

    #[test]
    fn bad_windows_say_what_is_wrong() {
        let days = vec!["sat".to_owned()];
        assert_eq!(Window::new(&[], "02:00", 60), Err(WindowError::NoDays));
        assert_eq!(
            Window::new(&["saturday".into()], "02:00", 60),
            Err(WindowError::UnknownDay("saturday".into()))
        );
        for start in ["2", "24:00", "02:60", "02:5", "ab:cd", ""] {
            assert_eq!(
                Window::new(&days, start, 60),
                Err(WindowError::BadStart(start.into()))
            );
        }
        assert_eq!(
            Window::new(&days, "02:00", 0),
            Err(WindowError::BadLength(0))
        );
        assert!(Window::new(&days, "2:05", WEEK_MINUTES).is_ok());
    }

    #[test]
    fn the_next_opening_is_always_open_and_never_skips_one() {
        bolero::check!()
            .with_type::<(u8, u16, u16, u32)>()
            .for_each(|&(days, start, length, offset)| {
                let days = days & 0x7f;
                if days == 0 {
                    return;
                }
                let window = Window {
                    days,
                    start_minute: u32::from(start) % 1440,
                    length_minutes: 1 + u32::from(length) % WEEK_MINUTES,
                };
                let now = SATURDAY + i64::from(offset % (30 * 86_400) as u32);
                let next = window.next_open(now);
                assert!(next >= now && next - now <= 7 * DAY);
                assert!(window.is_open(next));
                // Closed everywhere between now and the next opening (sampled each minute
                // near both ends).
                for probe in (now..next)
                    .take(90)
                    .chain((now.max(next - 90 * 60)..next).step_by(60))
                {
                    assert!(!window.is_open(probe), "open at {probe} before {next}");
                }
            });
    }
}
