/**
 * Backup schedules and retention, as pure functions (the BackupPolicy resource applies them).
 *
 * Schedules: `hourly`, `daily`, `nightly` (daily at 02:00 UTC), `weekly` (Sundays 02:00 UTC),
 * `daily@HH:MM` (UTC), or an interval `<N>m|h|d` counted from the last backup. A backup is due
 * when `up` runs at or after the due time: a pipeline that runs `pulumi up` on a timer (cron in CI)
 * takes the backups, and a late run takes one backup, not one per missed slot.
 *
 * Retention (the grandfather-father-son rules of restic's and borg's `keep-*` options): keep the
 * newest `last` backups, plus the newest backup of each of the newest `daily` days, `weekly` ISO
 * weeks and `monthly` months that have backups (UTC). The newest backup is always kept.
 */
import { validationError } from "../core/errors";

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

export type Schedule = { kind: "interval"; ms: number } | { kind: "daily"; minuteOfDay: number } | { kind: "weekly"; minuteOfDay: number; weekday: number };

export function parseSchedule(text: unknown, property = "schedule"): Schedule {
  if (typeof text !== "string") throw validationError(property, "give the schedule as text: hourly, daily, nightly, weekly, daily@HH:MM or an interval such as 12h");
  if (text === "hourly") return { kind: "interval", ms: HOUR };
  if (text === "daily") return { kind: "interval", ms: DAY };
  if (text === "nightly") return { kind: "daily", minuteOfDay: 2 * 60 };
  if (text === "weekly") return { kind: "weekly", minuteOfDay: 2 * 60, weekday: 0 };
  let m = /^daily@([01]\d|2[0-3]):([0-5]\d)$/.exec(text);
  if (m) return { kind: "daily", minuteOfDay: Number(m[1]) * 60 + Number(m[2]) };
  m = /^(\d{1,5})(s|m|h|d)$/.exec(text);
  if (m) {
    const ms = Number(m[1]) * { s: 1000, m: MINUTE, h: HOUR, d: DAY }[m[2] as "s" | "m" | "h" | "d"];
    if (ms >= 1000) return { kind: "interval", ms };
  }
  throw validationError(property, `${JSON.stringify(text)} is not a schedule: use hourly, daily, nightly (02:00 UTC), weekly, daily@HH:MM (UTC) or an interval such as 30m, 12h, 7d`);
}

/** When the next backup falls due, given the last one (or none). */
export function nextDue(schedule: Schedule, last: Date | undefined, now: Date = new Date()): Date {
  if (!last) return now;
  if (schedule.kind === "interval") return new Date(last.getTime() + schedule.ms);
  // The first slot strictly after the last backup.
  const day0 = Date.UTC(last.getUTCFullYear(), last.getUTCMonth(), last.getUTCDate());
  for (let d = 0; d <= 8; d++) {
    const slot = day0 + d * DAY + schedule.minuteOfDay * MINUTE;
    if (slot <= last.getTime()) continue;
    if (schedule.kind === "weekly" && new Date(slot).getUTCDay() !== schedule.weekday) continue;
    return new Date(slot);
  }
  throw new Error("unreachable: a weekly slot exists within 8 days");
}

export interface Retention {
  last?: number;
  daily?: number;
  weekly?: number;
  monthly?: number;
}

/** The ISO 8601 week of a date (UTC), as `YYYY-Www`. */
export function isoWeek(d: Date): string {
  const t = new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()));
  const day = t.getUTCDay() || 7;
  t.setUTCDate(t.getUTCDate() + 4 - day); // the Thursday of this week decides the year
  const yearStart = Date.UTC(t.getUTCFullYear(), 0, 1);
  const week = Math.ceil(((t.getTime() - yearStart) / DAY + 1) / 7);
  return `${t.getUTCFullYear()}-W${String(week).padStart(2, "0")}`;
}

/**
 * Which backups to keep: ids, from `backups` (any order) with their creation times. Everything
 * else is to be deleted.
 */
export function selectKept(backups: { id: string; createdAt: string }[], rules: Retention): Set<string> {
  const newest = [...backups].sort((a, b) => b.createdAt.localeCompare(a.createdAt) || b.id.localeCompare(a.id));
  const keep = new Set<string>();
  if (newest.length) keep.add(newest[0].id);
  newest.slice(0, Math.max(0, rules.last ?? 0)).forEach((b) => keep.add(b.id));
  const bucketed = (count: number | undefined, key: (d: Date) => string) => {
    if (!count) return;
    const seen = new Set<string>();
    for (const b of newest) {
      const k = key(new Date(b.createdAt));
      if (seen.has(k)) continue;
      if (seen.size >= count) break;
      seen.add(k);
      keep.add(b.id);
    }
  };
  bucketed(rules.daily, (d) => d.toISOString().slice(0, 10));
  bucketed(rules.weekly, isoWeek);
  bucketed(rules.monthly, (d) => d.toISOString().slice(0, 7));
  return keep;
}
