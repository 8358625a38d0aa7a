/**
 * One Redfish session per BMC and credentials in a provider process, shared by the operations in
 * flight, logged out when the last of them ends.
 *
 * Pulumi runs many operations at once, and BMCs serve few sessions (16 on some): one session per
 * operation would exhaust them. Logging out when the last user leaves (rather than after an idle
 * time) also means the engine, which ends the provider process as soon as the run is over, never
 * leaves a session behind.
 */

export interface SharedSession {
  token: string;
  location?: string;
}

interface Entry {
  session?: SharedSession;
  creating?: Promise<SharedSession>;
  users: number;
}

export class SessionPool {
  private readonly entries = new Map<string, Entry>();

  /** Joins the key's session, logging in with `login` when there is none yet. */
  async acquire(key: string, login: () => Promise<SharedSession>): Promise<SharedSession> {
    let entry = this.entries.get(key);
    if (!entry) this.entries.set(key, (entry = { users: 0 }));
    entry.users++;
    try {
      return await this.current(entry, login);
    } catch (e) {
      await this.leave(key, entry);
      throw e;
    }
  }

  /**
   * The session `stale` was refused (expired, deleted behind our back): log in anew, once for
   * all its users. A user that comes late with an already replaced token gets the new session.
   */
  async renew(key: string, stale: string, login: () => Promise<SharedSession>): Promise<SharedSession> {
    const entry = this.entries.get(key);
    if (!entry) throw new Error("SessionPool.renew without acquire");
    if (entry.session?.token === stale) entry.session = undefined;
    return this.current(entry, login);
  }

  /** Leaves; the last user out logs the session out with `logout`. */
  async release(key: string, logout: (session: SharedSession) => Promise<void>): Promise<void> {
    const entry = this.entries.get(key);
    if (!entry) return;
    await this.leave(key, entry, logout);
  }

  /** Sessions currently open (for tests and benchmarks). */
  get open(): number {
    return [...this.entries.values()].filter((e) => e.session).length;
  }

  private async current(entry: Entry, login: () => Promise<SharedSession>): Promise<SharedSession> {
    if (entry.session) return entry.session;
    if (!entry.creating) {
      entry.creating = login().finally(() => {
        entry.creating = undefined;
      });
      entry.session = await entry.creating;
      return entry.session;
    }
    return entry.creating;
  }

  private async leave(key: string, entry: Entry, logout?: (session: SharedSession) => Promise<void>): Promise<void> {
    entry.users--;
    if (entry.users > 0) return;
    this.entries.delete(key);
    const session = entry.session;
    if (session && logout) await logout(session);
  }
}
