import { isBaremetalError } from "../core/errors";
import { isoWeek, nextDue, parseSchedule, selectKept } from "./retention";

const at = (s: string) => new Date(s);

describe("schedules", () => {
  test("names, daily@HH:MM and intervals parse; anything else is refused naming the property", () => {
    expect(parseSchedule("hourly")).toEqual({ kind: "interval", ms: 3_600_000 });
    expect(parseSchedule("nightly")).toEqual({ kind: "daily", minuteOfDay: 120 });
    expect(parseSchedule("daily@23:30")).toEqual({ kind: "daily", minuteOfDay: 1410 });
    expect(parseSchedule("12h")).toEqual({ kind: "interval", ms: 12 * 3_600_000 });
    for (const bad of ["daily@24:00", "0s", "every night", "", 5]) {
      try {
        parseSchedule(bad, "schedule");
        throw new Error(`accepted ${String(bad)}`);
      } catch (e) {
        expect(isBaremetalError(e) && e.property).toBe("schedule");
      }
    }
  });

  test("the first backup is due at once; intervals count from the last; slots are the first after the last backup", () => {
    const now = at("2026-11-23T10:00:00Z");
    expect(nextDue(parseSchedule("nightly"), undefined, now)).toEqual(now);
    expect(nextDue(parseSchedule("6h"), at("2026-11-23T09:00:00Z"))).toEqual(at("2026-11-23T15:00:00Z"));
    expect(nextDue(parseSchedule("nightly"), at("2026-11-23T01:59:00Z"))).toEqual(at("2026-11-23T02:00:00Z"));
    expect(nextDue(parseSchedule("nightly"), at("2026-11-23T02:00:00Z"))).toEqual(at("2026-11-24T02:00:00Z"));
    // 2026-11-23 is a Monday: the next Sunday 02:00.
    expect(nextDue(parseSchedule("weekly"), at("2026-11-23T12:00:00Z"))).toEqual(at("2026-11-29T02:00:00Z"));
  });
});

describe("retention", () => {
  test("ISO weeks: the Thursday decides the year", () => {
    expect(isoWeek(at("2026-01-01T00:00:00Z"))).toBe("2026-W01");
    expect(isoWeek(at("2027-01-01T00:00:00Z"))).toBe("2026-W53");
    expect(isoWeek(at("2026-11-23T00:00:00Z"))).toBe("2026-W48");
  });

  test("7 daily + 4 weekly over 40 nightly backups keeps exactly 7 days and the newest of 4 weeks", () => {
    // Nightly at 02:00 from 2026-10-01 to 2026-11-09 (40 backups), the last on Monday 2026-11-09.
    const backups = [...Array(40).keys()].map((i) => ({ id: `b${i}`, createdAt: new Date(Date.UTC(2026, 9, 1 + i, 2)).toISOString() }));
    const kept = [...selectKept(backups, { daily: 7, weekly: 4 })].sort((a, b) => Number(a.slice(1)) - Number(b.slice(1)));
    // Daily: Nov 3..9 = b33..b39. Weekly (ISO weeks, newest backup of each): W46 (Nov 9, b39),
    // W45 (Nov 2..8: newest Nov 8 = b38), W44 (Oct 26..Nov 1: Nov 1 = b31), W43 (Oct 19..25: Oct 25 = b24).
    expect(kept).toEqual(["b24", "b31", "b33", "b34", "b35", "b36", "b37", "b38", "b39"]);
  });

  test("last N, monthly, and the newest always kept; no rules keep only the newest", () => {
    const backups = [
      { id: "a", createdAt: "2026-08-31T02:00:00Z" },
      { id: "b", createdAt: "2026-09-15T02:00:00Z" },
      { id: "c", createdAt: "2026-09-30T02:00:00Z" },
      { id: "d", createdAt: "2026-10-01T02:00:00Z" },
      { id: "e", createdAt: "2026-10-02T02:00:00Z" },
    ];
    expect([...selectKept(backups, { last: 2 })].sort()).toEqual(["d", "e"]);
    expect([...selectKept(backups, { monthly: 2 })].sort()).toEqual(["c", "e"]);
    expect([...selectKept(backups, {})]).toEqual(["e"]);
    expect([...selectKept([], { last: 3 })]).toEqual([]);
  });
});
