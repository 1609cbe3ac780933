//! When something expires (or happened), in plain words: "24 hours" and "Sunday 22 November 2026
//! at 10:00 UTC", or their French equivalents. We do not know the reader's time zone, so dates
//! are UTC.

use time::{OffsetDateTime, UtcOffset};

use super::Locale;

/// An expiry described for people, in one locale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expiry {
    /// How long is left, rounded: "45 minutes", "24 hours", "3 days".
    pub(crate) remaining: String,
    /// The moment itself: "Sunday 22 November 2026 at 10:00 UTC".
    pub(crate) moment: String,
}

impl Expiry {
    /// Describes `expires_at` as seen at `now`; `None` when it is not in the future.
    pub(crate) fn describe(
        expires_at: OffsetDateTime,
        now: OffsetDateTime,
        locale: Locale,
    ) -> Option<Self> {
        let remaining = Remaining::between(now, expires_at)?;
        Some(Self {
            remaining: remaining.in_words(locale),
            moment: moment(expires_at, locale),
        })
    }
}

/// Time left, rounded to the nearest unit people would use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Remaining {
    /// Under an hour: 1 to 59 minutes (a few seconds count as one minute).
    Minutes(i64),
    /// Under two days: 1 to 47 hours, so a one-day token reads "24 hours".
    Hours(i64),
    /// Two days or more.
    Days(i64),
}

impl Remaining {
    fn between(now: OffsetDateTime, expires_at: OffsetDateTime) -> Option<Self> {
        let seconds = (expires_at - now).whole_seconds();
        if seconds <= 0 {
            return None;
        }
        // Round to the nearest minute, then hour, then day, so 23 h 59 min 30 s reads
        // "24 hours"; the exact moment follows in the same sentence.
        let minutes = ((seconds + 30) / 60).max(1);
        if minutes < 60 {
            return Some(Self::Minutes(minutes));
        }
        let hours = (minutes + 30) / 60;
        if hours < 48 {
            return Some(Self::Hours(hours));
        }
        Some(Self::Days((hours + 12) / 24))
    }

    fn in_words(self, locale: Locale) -> String {
        let words = words(locale);
        let (count, [one, many]) = match self {
            Self::Minutes(n) => (n, words.minute),
            Self::Hours(n) => (n, words.hour),
            Self::Days(n) => (n, words.day),
        };
        format!("{count} {}", if count == 1 { one } else { many })
    }
}

/// `at` in UTC, written out: "Sunday 22 November 2026 at 10:00 UTC".
pub(crate) fn moment(at: OffsetDateTime, locale: Locale) -> String {
    let at = at.to_offset(UtcOffset::UTC);
    let words = words(locale);
    let weekday = words.weekdays[usize::from(at.weekday().number_days_from_monday())];
    let month = words.months[usize::from(u8::from(at.month())) - 1];
    let (day, year, hour, minute) = (at.day(), at.year(), at.hour(), at.minute());
    match locale {
        Locale::En => format!("{weekday} {day} {month} {year} at {hour:02}:{minute:02} UTC"),
        Locale::Fr => {
            let day = if day == 1 {
                "1er".to_owned()
            } else {
                day.to_string()
            };
            // French writes "10 h 00", with non-breaking spaces so the time stays on one line.
            format!("{weekday} {day} {month} {year} à {hour}\u{a0}h\u{a0}{minute:02} UTC")
        }
    }
}

/// The words of one locale.
struct Words {
    minute: [&'static str; 2],
    hour: [&'static str; 2],
    day: [&'static str; 2],
    /// Monday first.
    weekdays: [&'static str; 7],
    /// January first.
    months: [&'static str; 12],
}

fn words(locale: Locale) -> &'static Words {
    match locale {
        Locale::En => &Words {
            minute: ["minute", "minutes"],
            hour: ["hour", "hours"],
            day: ["day", "days"],
            weekdays: [
                "Monday",
                "Tuesday",
                "Wednesday",
                "Thursday",
                "Friday",
                "Saturday",
                "Sunday",
            ],
            months: [
                "January",
                "February",
                "March",
                "April",
                "May",
                "June",
                "July",
                "August",
                "September",
                "October",
                "November",
                "December",
            ],
        },
        Locale::Fr => &Words {
            minute: ["minute", "minutes"],
            hour: ["heure", "heures"],
            day: ["jour", "jours"],
            weekdays: [
                "lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche",
            ],
            months: [
                "janvier",
                "février",
                "mars",
                "avril",
                "mai",
                "juin",
                "juillet",
                "août",
                "septembre",
                "octobre",
                "novembre",
                "décembre",
            ],
        },
    }
}

#[cfg(test)]
mod tests {
    use time::Duration;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2026-11-21 10:00 UTC);

    fn remaining(after: Duration, locale: Locale) -> String {
        Expiry::describe(NOW + after, NOW, locale)
            .expect("in the future")
            .remaining
    }

    #[test]
    fn a_day_away_reads_as_24_hours_with_the_date() {
        let expiry = Expiry::describe(datetime!(2026-11-22 10:00 UTC), NOW, Locale::En);
        assert_eq!(
            expiry,
            Some(Expiry {
                remaining: "24 hours".into(),
                moment: "Sunday 22 November 2026 at 10:00 UTC".into(),
            })
        );
    }

    #[test]
    fn durations_round_to_minutes_hours_or_days() {
        assert_eq!(remaining(Duration::minutes(45), Locale::En), "45 minutes");
        assert_eq!(remaining(Duration::seconds(5), Locale::En), "1 minute");
        assert_eq!(remaining(Duration::seconds(3570), Locale::En), "1 hour");
        assert_eq!(remaining(Duration::seconds(86_370), Locale::En), "24 hours");
        assert_eq!(remaining(Duration::hours(36), Locale::En), "36 hours");
        assert_eq!(
            remaining(Duration::hours(47) + Duration::minutes(40), Locale::En),
            "2 days"
        );
        assert_eq!(remaining(Duration::days(3), Locale::En), "3 days");
        assert_eq!(
            remaining(Duration::days(3) - Duration::hours(5), Locale::En),
            "3 days"
        );
    }

    #[test]
    fn french_uses_french_words() {
        assert_eq!(remaining(Duration::hours(24), Locale::Fr), "24 heures");
        assert_eq!(remaining(Duration::days(3), Locale::Fr), "3 jours");
        assert_eq!(remaining(Duration::minutes(1), Locale::Fr), "1 minute");
        let expiry = Expiry::describe(datetime!(2026-11-22 09:05 UTC), NOW, Locale::Fr);
        assert_eq!(
            expiry.expect("in the future").moment,
            "dimanche 22 novembre 2026 à 9\u{a0}h\u{a0}05 UTC"
        );
        let first = Expiry::describe(datetime!(2026-12-01 00:00 UTC), NOW, Locale::Fr);
        assert!(
            first
                .expect("future")
                .moment
                .starts_with("mardi 1er décembre 2026")
        );
    }

    #[test]
    fn the_moment_is_written_in_utc() {
        let paris = datetime!(2026-11-22 11:00 +01:00);
        let expiry = Expiry::describe(paris, NOW, Locale::En).expect("in the future");
        assert_eq!(expiry.moment, "Sunday 22 November 2026 at 10:00 UTC");
    }

    #[test]
    fn a_past_or_present_expiry_is_not_described() {
        assert_eq!(Expiry::describe(NOW, NOW, Locale::En), None);
        assert_eq!(
            Expiry::describe(NOW - Duration::hours(1), NOW, Locale::Fr),
            None
        );
    }
}
