import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { BaremetalError, isBaremetalError } from "./errors";
import {
  Credentials,
  DEFAULT_RULES,
  OPERATIONS,
  Policy,
  PolicyTarget,
  SYSTEM_PROJECT,
  formatCheck,
  parseCheckString,
} from "./policy";

/** Catches the error a function throws, failing the test when it throws none. */
function thrown(fn: () => unknown): BaremetalError {
  try {
    fn();
  } catch (e) {
    if (isBaremetalError(e)) return e;
    throw e;
  }
  throw new Error("expected an error");
}

/** Whether `expr`, put in place of an operation's default, allows the caller on the target. */
function allows(expr: string, creds: Credentials, target: PolicyTarget = {}): boolean {
  return Policy.load({ "baremetal:node:get": expr }).check("baremetal:node:get", creds, target).allowed;
}

const p1Member: Credentials = { projectId: "p1", roles: ["member"] };

describe("policy grammar", () => {
  it.each([
    ["role:a or role:b and role:c", "(role:a or (role:b and role:c))"],
    ["role:a and role:b or role:c", "((role:a and role:b) or role:c)"],
    ["role:a or role:b and role:c or role:d", "(role:a or (role:b and role:c) or role:d)"],
    ["not role:a and role:b", "(not role:a and role:b)"],
    ["not role:a or role:b", "(not role:a or role:b)"],
    ["not (role:a or role:b)", "not (role:a or role:b)"],
    ["not not role:a", "not not role:a"],
    ["(role:a or role:b) and role:c", "((role:a or role:b) and role:c)"],
    ["((role:a))", "role:a"],
    ["(role:a or (role:b and (role:c)))", "(role:a or (role:b and role:c))"],
    ["role:a AND role:b Or NOT role:c", "((role:a and role:b) or not role:c)"],
    ["@", "@"],
    ["!", "!"],
    ["", "@"],
    ["rule:baremetal:node:get", "rule:baremetal:node:get"],
    ["project_id:%(node.owner)s", "project_id:%(node.owner)s"],
    ["'member':%(role.name)s", "'member':%(role.name)s"],
    ["True:%(node.public)s", "True:%(node.public)s"],
    ["(project_id:'p 1' or role:a)", "(project_id:'p 1' or role:a)"],
  ])("parses %j as %s (not > and > or)", (text, printed) => {
    expect(formatCheck(parseCheckString(text))).toBe(printed);
  });

  it("evaluates with oslo's precedence", () => {
    const a = { projectId: "p", roles: ["a"] };
    expect(allows("role:a or role:b and role:c", a)).toBe(true);
    expect(allows("(role:a or role:b) and role:c", a)).toBe(false);
    expect(allows("role:c and role:b or role:a", a)).toBe(true);
    expect(allows("role:c and (role:b or role:a)", a)).toBe(false);
    expect(allows("not role:a and role:b", { projectId: "p", roles: ["b"] })).toBe(true);
    expect(allows("not (role:a and role:b)", { projectId: "p", roles: ["a"] })).toBe(true);
    expect(allows("not (role:a or role:b)", a)).toBe(false);
    expect(allows("not not role:a", a)).toBe(true);
  });

  it("treats @ and \"\" as always and ! as never", () => {
    const nobody: Credentials = { roles: [] };
    expect(allows("", nobody)).toBe(true);
    expect(allows("@", nobody)).toBe(true);
    expect(allows("!", p1Member)).toBe(false);
    expect(allows("@ and !", p1Member)).toBe(false);
    expect(allows("! or @", nobody)).toBe(true);
    expect(allows("not !", nobody)).toBe(true);
  });

  it("matches roles case-insensitively, with Keystone's implied roles", () => {
    expect(allows("role:MEMBER", { projectId: "p", roles: ["Member"] })).toBe(true);
    expect(allows("role:reader", { projectId: "p", roles: ["admin"] })).toBe(true); // admin -> manager -> member -> reader
    expect(allows("role:manager", { projectId: "p", roles: ["admin"] })).toBe(true);
    expect(allows("role:admin", { projectId: "p", roles: ["member"] })).toBe(false);
    expect(allows("role:reader", { projectId: "p", roles: ["service"] })).toBe(false);
  });

  it("substitutes target values into role and generic checks", () => {
    expect(allows("project_id:%(node.owner)s", p1Member, { "node.owner": "p1" })).toBe(true);
    expect(allows("project_id:%(node.owner)s", p1Member, { "node.owner": "p2" })).toBe(false);
    expect(allows("role:%(needed)s", p1Member, { needed: "member" })).toBe(true);
    expect(allows("role:%(needed)s", p1Member, { needed: "admin" })).toBe(false);
    expect(allows("project_id:%(a)s-%(b)s", { projectId: "x-y", roles: [] }, { a: "x", b: "y" })).toBe(true);
    expect(allows("project_id:100%%", { projectId: "100%", roles: [] })).toBe(true);
  });

  it("compares literal values, bare or quoted", () => {
    expect(allows("project_id:p1", p1Member)).toBe(true);
    expect(allows("project_id:p2", p1Member)).toBe(false);
    expect(allows("project_id:'p 1' and role:member", { projectId: "p 1", roles: ["member"] })).toBe(true);
    expect(allows('project_id:"p1"', p1Member)).toBe(true);
  });

  it("supports a literal on the left side, compared with the substituted value", () => {
    expect(allows("'member':%(role.name)s", p1Member, { "role.name": "member" })).toBe(true);
    expect(allows('"member":%(role.name)s', p1Member, { "role.name": "member" })).toBe(true);
    expect(allows("'member':%(role.name)s", p1Member, { "role.name": "admin" })).toBe(false);
    expect(allows("True:%(node.public)s", p1Member, { "node.public": "True" })).toBe(true);
    expect(allows("True:%(node.public)s", p1Member, { "node.public": "False" })).toBe(false);
    expect(allows("True:%(node.public)s", p1Member, {})).toBe(false);
    expect(allows("42:%(n)s", p1Member, { n: "42" })).toBe(true);
  });

  it("looks up credentials by dotted path, matching any element of a list", () => {
    expect(allows("roles:member", p1Member)).toBe(true);
    expect(allows("roles:admin", p1Member)).toBe(false);
    expect(allows("project_id.nothing:x", p1Member)).toBe(false);
  });

  it("maps the system project to system scope, other projects to project scope", () => {
    const system = { projectId: SYSTEM_PROJECT, roles: ["reader"] };
    expect(allows("system_scope:all", system)).toBe(true);
    expect(allows("is_admin_project:True", system)).toBe(true);
    expect(allows("system_scope:all", p1Member)).toBe(false);
    expect(allows("is_admin_project:False", p1Member)).toBe(true);
    // System-scoped tokens carry no project id.
    expect(allows(`project_id:${SYSTEM_PROJECT}`, system)).toBe(false);
  });

  it("sees the caller's own values in the target, as Ironic's check_owner_policy does", () => {
    expect(allows("project_id:%(project_id)s", p1Member)).toBe(true);
    expect(allows("project_id:%(project_id)s", { roles: ["admin"] })).toBe(false);
  });
});

describe("missing values never match (the undefined == undefined trap)", () => {
  const noProject: Credentials = { roles: ["admin"] };
  const emptyProject: Credentials = { projectId: "", roles: ["admin"] };
  const system: Credentials = { projectId: SYSTEM_PROJECT, roles: ["admin"] };

  it.each([
    ["no project, no owner key", noProject, {}],
    ["no project, owner undefined", noProject, { "node.owner": undefined }],
    ["empty project, empty owner", emptyProject, { "node.owner": "" }],
    ["system scope (no project id), unowned", system, {}],
    ["project caller, empty owner", p1Member, { "node.owner": "" }],
  ])("is_node_owner does not match: %s", (_what, creds, target) => {
    expect(allows("rule:is_node_owner", creds, target)).toBe(false);
    expect(allows("project_id:%(node.owner)s", creds, target)).toBe(false);
  });

  it("does not match None or an empty literal against an unset key", () => {
    expect(allows("None:%(node.owner)s", p1Member, {})).toBe(false);
    expect(allows("None:%(node.owner)s", p1Member, { "node.owner": undefined })).toBe(false);
    expect(allows("role:%(missing)s", p1Member, {})).toBe(false);
  });

  it("denies every owner-based default on an unowned node, and says why", () => {
    const d = Policy.defaults().check("baremetal:node:set_provision_state", p1Member, {});
    expect(d.allowed).toBe(false);
    expect(d.explanation).toMatch(/node\.owner, node\.lessee do not apply: not set on this object/);
    const owner = Policy.load({ "baremetal:node:get": "rule:is_node_owner" }).check("baremetal:node:get", noProject, {});
    expect(owner.explanation).toMatch(/cannot be met for this object: it needs node\.owner, which is not set/);
  });
});

describe("policy errors", () => {
  it("reports a parse error with the rule, the column and what was expected", () => {
    const e = thrown(() => Policy.load({ "baremetal:node:get": "role:admin or or role:reader" }, "test.yaml"));
    expect(e.code).toBe("validation");
    expect(e.property).toBe("policy");
    expect(e.message).toBe(
      `test.yaml: rule "baremetal:node:get": column 15: expected a check (role:NAME, rule:NAME, KEY:VALUE, '@' or '!'), 'not' or '(', found 'or' in "role:admin or or role:reader"`,
    );
  });

  it.each([
    ["role:a or", 10, /found the end of the rule/],
    ["(role:a or role:b", 18, /expected 'and', 'or' or '\)' to close the '\(' at column 1/],
    ["role:a)", 7, /a '\)' that closes nothing/],
    ["role:a role:b", 8, /expected 'and', 'or' or the end of the rule after a check, found 'role:b'/],
    ["admin", 1, /a check has the form KIND:VALUE/],
    ["role:a and 'quoted'", 12, /a quoted literal must be followed by ':VALUE'/],
    ["rule:", 6, /expected a rule name after 'rule:'/],
    ["role:", 6, /expected a role name after 'role:'/],
    ["project_id:", 12, /expected a value after 'project_id:'/],
    [":x", 1, /expected a check kind/],
    ["project_id:%(node.owner", 12, /expected a substitution '%\(key\)s'/],
    ["project_id:50%", 14, /or '%%' for a literal '%'/],
    ["project_id:'p1", 12, /expected a closing ' for the quote/],
    ["http://example.com/check", 1, /external 'http:' checks are not supported/],
    ["not(role:a", 1, /expected a credential name/],
    ["   ", 1, /found only spaces/],
    ["()", 2, /found '\)'/],
  ])("rejects %j at column %d", (text, column, why) => {
    const e = thrown(() => Policy.load({ "baremetal:node:get": text }));
    expect(e.code).toBe("validation");
    expect(e.message).toContain(`rule "baremetal:node:get": column ${column}:`);
    expect(e.message).toMatch(why);
  });

  it("rejects a reference to an unknown rule, naming both and suggesting the closest", () => {
    const e = thrown(() => Policy.load({ "baremetal:node:get": "rule:is_admin or rule:is_adm" }));
    expect(e.code).toBe("validation");
    expect(e.message).toBe(
      `policy overrides: rule "baremetal:node:get": column 23: refers to rule "is_adm", which is not defined (did you mean "is_admin"?)`,
    );
  });

  it("rejects cycles of rule references", () => {
    const e = thrown(() => Policy.load({ a: "rule:b", b: "rule:c or role:x", c: "role:y and rule:a" }));
    expect(e.code).toBe("validation");
    expect(e.message).toMatch(/rule "a": rule references form a cycle: a -> b -> c -> a/);
    expect(thrown(() => Policy.load({ a: "not rule:a" })).message).toMatch(/cycle: a -> a/);
  });

  it("rejects a cycle through the defaults", () => {
    const e = thrown(() => Policy.load({ system_reader: "rule:baremetal:node:list_all" }));
    expect(e.message).toMatch(/cycle: .*system_reader -> baremetal:node:list_all -> system_reader|cycle: baremetal:node:list_all -> system_reader -> baremetal:node:list_all/);
  });

  it("lists every problem when there are several", () => {
    const e = thrown(() => Policy.load({ a: "role:x or", b: "rule:nope", c: "rule:c" }));
    expect(e.message).toMatch(/\(and 2 more problems\)$/);
    expect(e.details).toHaveLength(3);
    expect(e.details.join("\n")).toMatch(/rule "a".*\n.*rule "b".*"nope".*\n.*rule "c".*cycle/);
  });

  it("knows no rules from Object.prototype", () => {
    expect(thrown(() => Policy.load({ "baremetal:node:get": "rule:toString" })).message).toMatch(/refers to rule "toString", which is not defined/);
    const p = Policy.parse('"__proto__": "@"\n"baremetal:node:get": "rule:__proto__"\n');
    expect(p.check("baremetal:node:get", { roles: [] }, {}).allowed).toBe(true);
  });

  it("rejects check strings that are not text", () => {
    const bad = { "baremetal:node:get": ["role:admin"] } as unknown as Record<string, string>;
    expect(thrown(() => Policy.load(bad)).message).toMatch(/found a list \(the list-of-lists syntax is not supported\)/);
  });

  it("refuses unknown operations instead of allowing them", () => {
    const p = Policy.defaults();
    const e = thrown(() => p.check("baremetal:node:gett", p1Member, {}));
    expect(e.code).toBe("validation");
    expect(e.property).toBe("operation");
    expect(e.message).toMatch(/unknown policy operation "baremetal:node:gett" \(did you mean "baremetal:node:get"\?\)/);
    // Helper rules are not operations.
    expect(() => p.check("is_admin", p1Member, {})).toThrow(/unknown policy operation "is_admin"/);
    expect(() => p.enforce("nothing", p1Member, {})).toThrow(/unknown policy operation/);
  });
});

// ---------------------------------------------------------------------------------------------
// The defaults against a matrix of callers

const callers = {
  systemAdmin: { projectId: SYSTEM_PROJECT, roles: ["admin"] },
  systemReader: { projectId: SYSTEM_PROJECT, roles: ["reader"] },
  service: { projectId: "service", roles: ["service"] },
  ownerAdmin: { projectId: "p1", roles: ["admin"] },
  ownerMember: { projectId: "p1", roles: ["member"] },
  ownerReader: { projectId: "p1", roles: ["reader"] },
  lesseeAdmin: { projectId: "p3", roles: ["admin"] },
  lesseeMember: { projectId: "p3", roles: ["member"] },
  lesseeReader: { projectId: "p3", roles: ["reader"] },
  otherAdmin: { projectId: "p2", roles: ["admin"] },
  otherMember: { projectId: "p2", roles: ["member"] },
  noProject: { roles: ["admin", "member"] },
} satisfies Record<string, Credentials>;
type Caller = keyof typeof callers;
const callerNames = Object.keys(callers) as Caller[];

/** Node p1-owned and leased to p3; allocation owned by p1; network owned by p3. */
const target: PolicyTarget = { "node.owner": "p1", "node.lessee": "p3", "allocation.owner": "p1", "network.owner": "p3", "key.owner": "p3", "volume.owner": "p3" };

// Columns: systemAdmin systemReader service ownerAdmin ownerMember ownerReader lesseeAdmin
// lesseeMember lesseeReader otherAdmin otherMember noProject. Derived by hand from Ironic's defaults.
const readNode = "Y Y Y Y Y Y Y Y Y N N N";
const anyReader = "Y Y Y Y Y Y Y Y Y Y Y N";
const systemRead = "Y Y Y N N N N N N N N N";
const memberOfNode = "Y N Y Y Y N Y Y N N N N";
const ownerMemberLesseeAdmin = "Y N Y Y Y N Y N N N N N";
const expected: Record<string, string> = {
  "baremetal:node:create": "Y N Y N N N N N N N N N",
  "baremetal:node:delete": "Y N N N N N N N N N N N",
  "baremetal:node:get": readNode,
  "baremetal:node:list": anyReader,
  "baremetal:node:list_all": systemRead,
  "baremetal:node:update": memberOfNode,
  "baremetal:node:update_extra": memberOfNode,
  "baremetal:node:update_instance_info": ownerMemberLesseeAdmin,
  "baremetal:node:validate": ownerMemberLesseeAdmin,
  "baremetal:node:set_provision_state": ownerMemberLesseeAdmin,
  "baremetal:node:set_power_state": memberOfNode,
  // Not Ironic's (system and owner members only): the lessee's admins and managers too, as for deploy.
  "baremetal:node:get_console": ownerMemberLesseeAdmin,
  "baremetal:node:vif:attach": ownerMemberLesseeAdmin,
  "baremetal:node:vif:detach": ownerMemberLesseeAdmin,
  "baremetal:port:get": readNode,
  "baremetal:port:list": anyReader,
  "baremetal:port:create": "Y N Y N N N N N N N N N",
  "baremetal:port:update": "Y N Y N N N N N N N N N",
  "baremetal:port:delete": "Y N Y N N N N N N N N N",
  "baremetal:network:get": "Y Y Y N N N Y Y Y N N N",
  "baremetal:network:create": "Y N Y N N N Y Y N N N N",
  "baremetal:network:update": "Y N Y N N N Y Y N N N N",
  "baremetal:network:delete": "Y N Y N N N Y Y N N N N",
  "baremetal:network:attach": "Y N Y N N N Y Y N N N N",
  "baremetal:key:get": "Y Y Y N N N Y Y Y N N N",
  "baremetal:key:create": "Y N Y N N N Y Y N N N N",
  "baremetal:key:update": "Y N Y N N N Y Y N N N N",
  "baremetal:key:delete": "Y N Y N N N Y Y N N N N",
  "baremetal:volume:create": "Y N Y N N N Y Y N N N N",
  "baremetal:volume:update": "Y N Y N N N Y Y N N N N",
  "baremetal:volume:delete": "Y N Y N N N Y Y N N N N",
  "baremetal:volume:attach": "Y N Y N N N Y Y N N N N",
  "baremetal:volume:detach": "Y N Y N N N Y Y N N N N",
  "baremetal:volume:backup": "Y N Y N N N Y Y N N N N",
  "baremetal:allocation:get": "Y Y Y Y Y Y N N N N N N",
  "baremetal:allocation:list": anyReader,
  "baremetal:allocation:list_all": systemRead,
  "baremetal:allocation:create": "Y N Y Y Y N Y Y N Y Y N",
  "baremetal:allocation:create_restricted": "Y N Y N N N N N N N N N",
  "baremetal:allocation:delete": "Y N Y Y Y N N N N N N N",
  "baremetal:allocation:update": "Y N Y Y Y N N N N N N N",
  // esi-leap's: the node owner's managers and the system admins (the target has no lease.owner).
  "baremetal:lease:create": "Y N N Y N N N N N N N N",
  "baremetal:lease:delete": "Y N N N N N N N N N N N",
};

describe("default rules", () => {
  const policy = Policy.defaults();

  it("cover exactly the operations", () => {
    expect(Object.keys(expected).sort()).toEqual([...OPERATIONS].sort());
    for (const op of OPERATIONS) expect(policy.rules()[op]).toBe(DEFAULT_RULES[op]);
  });

  it("define the base rules", () => {
    const rules = policy.rules();
    expect(rules.is_node_owner).toBe("project_id:%(node.owner)s");
    expect(rules.is_node_lessee).toBe("project_id:%(node.lessee)s");
    expect(rules.is_allocation_owner).toBe("project_id:%(allocation.owner)s");
    expect(policy.expanded("is_admin")).toBe("(role:admin and system_scope:all)");
    expect(rules.service_role).toBe("role:service and project_name:%(config.service_project_name)s");
  });

  describe.each(OPERATIONS.map((op) => [op]))("%s", (op) => {
    const row = expected[op].split(" ");
    it.each(callerNames.map((c, i) => [c, row[i] === "Y"] as const))("%s allowed: %s", (caller, allowed) => {
      const d = policy.check(op, callers[caller], target);
      expect(d.allowed).toBe(allowed);
      expect(d.operation).toBe(op);
      expect(d.rule).toBe(DEFAULT_RULES[op]);
      expect(d.explanation).toContain(`${op} ${allowed ? "allowed" : "denied"} for `);
      expect(d.explanation).toContain(`rule '${DEFAULT_RULES[op]}'`);
    });
  });

  it("lets only system members create allocations for another owner (create_restricted)", () => {
    const d = policy.check("baremetal:allocation:create_restricted", callers.ownerAdmin, { "allocation.owner": "p9" });
    expect(d.allowed).toBe(false);
    expect(d.explanation).toMatch(/requires one of: role member and the system project "system"; role service and project service/);
    expect(policy.check("baremetal:allocation:create_restricted", { projectId: SYSTEM_PROJECT, roles: ["member"] }, {}).allowed).toBe(true);
    // Plain create is open to any member; create_restricted is the extra check for a foreign owner.
    expect(policy.check("baremetal:allocation:create", callers.otherMember, {}).allowed).toBe(true);
  });

  it("does not treat a project admin as a cloud admin", () => {
    const other = { "node.owner": "p9", "node.lessee": "p8", "allocation.owner": "p9" };
    for (const op of OPERATIONS.filter((o) => !o.endsWith(":list") && o !== "baremetal:allocation:create")) {
      expect(policy.check(op, callers.ownerAdmin, other).allowed).toBe(false);
    }
  });

  it("explains a denial in one actionable line", () => {
    const d = policy.check("baremetal:node:set_provision_state", callers.lesseeMember, target);
    expect(d.explanation).not.toContain("\n");
    expect(d.explanation).toMatch(
      /^baremetal:node:set_provision_state denied for project p3 \(roles member\): rule 'rule:system_or_owner_member_and_lessee_admin' requires one of: .*role member and project p1 \(node\.owner\); role admin and project p3 \(node\.lessee\)/,
    );
    expect(policy.check("baremetal:node:get", callers.noProject, target).explanation).toMatch(
      /a caller without a project \(roles admin, member\).*roles count only within a project: set the provider's `project`$/,
    );
  });

  it("explains an allowance by the alternative that matched", () => {
    expect(policy.check("baremetal:node:get", callers.lesseeReader, target).explanation).toBe(
      "baremetal:node:get allowed for project p3 (roles reader): rule 'rule:system_or_project_reader' matched role reader and project p3 (node.lessee)",
    );
    expect(policy.check("baremetal:node:list_all", callers.systemAdmin, target).explanation).toContain(
      `allowed for project system (system scope; roles admin): rule 'rule:system_reader' matched role reader and the system project "system"`,
    );
  });
});

/**
 * Ironic writes its defaults by pasting persona strings together (ironic/common/policy.py); these
 * are those check strings, fully expanded. Our table names each persona as a rule instead: the
 * decisions must be the same.
 */
describe("equivalence with Ironic's expanded check strings", () => {
  const SYSTEM_ADMIN = "role:admin and system_scope:all";
  const SYSTEM_MEMBER = "(role:member and system_scope:all) or rule:service_role";
  const SYSTEM_READER = "(role:reader and system_scope:all) or (role:service and system_scope:all) or rule:service_role";
  const PROJECT_MEMBER = "role:member and (project_id:%(node.owner)s or project_id:%(node.lessee)s)";
  const PROJECT_READER = "role:reader and (project_id:%(node.owner)s or project_id:%(node.lessee)s)";
  const SYSTEM_SERVICE = "role:service and system_scope:all";
  const PROJECT_SERVICE = "role:service and project_id:%(node.owner)s";
  const or = (...parts: string[]) => parts.map((p) => `(${p})`).join(" or ");
  const SYSTEM_OR_PROJECT_MEMBER = or(SYSTEM_MEMBER, PROJECT_MEMBER, SYSTEM_SERVICE);
  const SYSTEM_OR_PROJECT_READER = or(SYSTEM_READER, PROJECT_READER, PROJECT_SERVICE);
  const SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN = or(
    SYSTEM_MEMBER,
    SYSTEM_SERVICE,
    "role:member and project_id:%(node.owner)s",
    "role:admin and project_id:%(node.lessee)s",
    "role:manager and project_id:%(node.lessee)s",
    PROJECT_SERVICE,
  );
  const ALLOCATION_MEMBER = or(SYSTEM_MEMBER, "role:member and project_id:%(allocation.owner)s");
  const ALLOCATION_READER = or(SYSTEM_READER, "role:reader and project_id:%(allocation.owner)s");
  const ironic: Record<string, string> = {
    "baremetal:node:create": SYSTEM_MEMBER,
    // Ironic lets system members delete nodes; ours keeps deletion to system admins (stricter).
    "baremetal:node:delete": SYSTEM_ADMIN,
    "baremetal:node:get": SYSTEM_OR_PROJECT_READER,
    "baremetal:node:list": "(role:reader) or (role:service)",
    "baremetal:node:list_all": SYSTEM_READER,
    "baremetal:node:update": SYSTEM_OR_PROJECT_MEMBER,
    "baremetal:node:update_extra": SYSTEM_OR_PROJECT_MEMBER,
    "baremetal:node:update_instance_info": SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN,
    "baremetal:node:validate": SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN,
    "baremetal:node:set_provision_state": SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN,
    "baremetal:node:set_power_state": SYSTEM_OR_PROJECT_MEMBER,
    // Not Ironic's (SYSTEM_MEMBER_OR_OWNER_MEMBER): the lessee's admins and managers too, as for deploy.
    "baremetal:node:get_console": SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN,
    // Not Ironic's: leases follow esi-leap (the node owner's managers and system admins create; the lease owner's managers end).
    "baremetal:lease:create": or(SYSTEM_ADMIN, "role:manager and project_id:%(node.owner)s"),
    "baremetal:lease:delete": or(SYSTEM_ADMIN, "role:manager and project_id:%(lease.owner)s"),
    "baremetal:node:vif:attach": SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN,
    "baremetal:node:vif:detach": SYSTEM_OR_OWNER_MEMBER_AND_LESSEE_ADMIN,
    "baremetal:port:get": SYSTEM_OR_PROJECT_READER,
    "baremetal:port:list": "(role:reader) or (role:service)",
    // Not compared with Ironic (ours): recording cabling is kept to system members; tenant networks
    // follow Neutron's model, a project's members manage and attach to its own networks.
    "baremetal:port:create": SYSTEM_MEMBER,
    "baremetal:port:update": SYSTEM_MEMBER,
    "baremetal:port:delete": SYSTEM_MEMBER,
    "baremetal:network:get": or(SYSTEM_READER, "role:reader and project_id:%(network.owner)s"),
    "baremetal:network:create": or(SYSTEM_MEMBER, "role:member and project_id:%(network.owner)s"),
    "baremetal:network:update": or(SYSTEM_MEMBER, "role:member and project_id:%(network.owner)s"),
    "baremetal:network:delete": or(SYSTEM_MEMBER, "role:member and project_id:%(network.owner)s"),
    "baremetal:network:attach": or(SYSTEM_MEMBER, "role:member and project_id:%(network.owner)s"),
    "baremetal:key:get": or(SYSTEM_READER, "role:reader and project_id:%(key.owner)s"),
    "baremetal:key:create": or(SYSTEM_MEMBER, "role:member and project_id:%(key.owner)s"),
    "baremetal:key:update": or(SYSTEM_MEMBER, "role:member and project_id:%(key.owner)s"),
    "baremetal:key:delete": or(SYSTEM_MEMBER, "role:member and project_id:%(key.owner)s"),
    "baremetal:volume:create": or(SYSTEM_MEMBER, "role:member and project_id:%(volume.owner)s"),
    "baremetal:volume:update": or(SYSTEM_MEMBER, "role:member and project_id:%(volume.owner)s"),
    "baremetal:volume:delete": or(SYSTEM_MEMBER, "role:member and project_id:%(volume.owner)s"),
    "baremetal:volume:attach": or(SYSTEM_MEMBER, "role:member and project_id:%(volume.owner)s"),
    "baremetal:volume:detach": or(SYSTEM_MEMBER, "role:member and project_id:%(volume.owner)s"),
    "baremetal:volume:backup": or(SYSTEM_MEMBER, "role:member and project_id:%(volume.owner)s"),
    "baremetal:allocation:get": ALLOCATION_READER,
    "baremetal:allocation:list": "(role:reader) or (role:service)",
    "baremetal:allocation:list_all": SYSTEM_READER,
    "baremetal:allocation:create": or(SYSTEM_MEMBER, "role:member"),
    "baremetal:allocation:create_restricted": SYSTEM_MEMBER,
    "baremetal:allocation:delete": ALLOCATION_MEMBER,
    "baremetal:allocation:update": ALLOCATION_MEMBER,
  };
  const ours = Policy.defaults();
  const theirs = Policy.load(ironic, "ironic");
  const targets: PolicyTarget[] = [
    target,
    {},
    { "node.owner": "p1" },
    { "node.lessee": "p3" },
    { "node.owner": "p3", "node.lessee": "p1", "allocation.owner": "p3" },
    { "node.owner": "service" },
  ];
  const everyone: Credentials[] = [
    ...Object.values(callers),
    { projectId: "p1", roles: ["manager"] },
    { projectId: "p3", roles: ["manager"] },
    { projectId: "p1", roles: ["service"] },
    { projectId: SYSTEM_PROJECT, roles: ["member"] },
    { projectId: SYSTEM_PROJECT, roles: ["service"] },
    { projectId: "service", roles: ["reader"] },
    { projectId: "p1", roles: [] },
  ];

  it("covers every operation", () => {
    expect(Object.keys(ironic).sort()).toEqual([...OPERATIONS].sort());
    expect(ours.expanded("system_admin")).toBe(SYSTEM_ADMIN);
  });

  it.each(OPERATIONS.map((op) => [op]))("%s decides as Ironic's string does", (op) => {
    for (const t of targets) {
      for (const c of everyone) {
        expect([op, c, t, ours.check(op, c, t).allowed]).toEqual([op, c, t, theirs.check(op, c, t).allowed]);
      }
    }
  });
});

describe("operator policy files", () => {
  let dir: string;
  beforeAll(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), "policy-test-"));
  });
  afterAll(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it("loads the seed example from a YAML file", () => {
    const file = path.join(dir, "policy.yaml");
    fs.writeFileSync(
      file,
      [
        "# Let lessees (any role) drive provisioning, as before secure RBAC.",
        '"baremetal:node:set_provision_state": "rule:is_admin or rule:is_node_owner or rule:is_node_lessee"',
        "",
      ].join("\n"),
    );
    const p = Policy.fromFile(file);
    const op = "baremetal:node:set_provision_state";
    expect(p.rules()[op]).toBe("rule:is_admin or rule:is_node_owner or rule:is_node_lessee");
    expect(Policy.defaults().check(op, callers.lesseeMember, target).allowed).toBe(false);
    expect(p.check(op, callers.lesseeMember, target).allowed).toBe(true);
    expect(p.check(op, callers.lesseeReader, target).allowed).toBe(true);
    expect(p.check(op, callers.ownerReader, target).allowed).toBe(true);
    expect(p.check(op, callers.systemAdmin, {}).allowed).toBe(true);
    expect(p.check(op, callers.systemReader, target).allowed).toBe(false);
    expect(p.check(op, callers.noProject, {}).allowed).toBe(false);
    const denied = p.check(op, callers.otherMember, target);
    expect(denied.allowed).toBe(false);
    expect(denied.rule).toBe("rule:is_admin or rule:is_node_owner or rule:is_node_lessee");
    expect(denied.explanation).toBe(
      `${op} denied for project p2 (roles member): rule 'rule:is_admin or rule:is_node_owner or rule:is_node_lessee' requires one of: ` +
        `role admin and the system project "system"; project p1 (node.owner); project p3 (node.lessee)`,
    );
    // Other operations keep their defaults.
    expect(p.rules()["baremetal:node:get"]).toBe(DEFAULT_RULES["baremetal:node:get"]);
  });

  it("loads JSON too", () => {
    const file = path.join(dir, "policy.json");
    fs.writeFileSync(file, JSON.stringify({ "baremetal:node:get": "rule:is_admin", "baremetal:port:get": "@" }));
    const p = Policy.fromFile(file);
    expect(p.check("baremetal:node:get", callers.ownerMember, target).allowed).toBe(false);
    expect(p.check("baremetal:port:get", { roles: [] }, {}).allowed).toBe(true);
  });

  it("names the file in its errors", () => {
    const file = path.join(dir, "broken.yaml");
    fs.writeFileSync(file, '"baremetal:node:get": "role:admin and"\n');
    expect(thrown(() => Policy.fromFile(file)).message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}: rule "baremetal:node:get": column 15`));
    const missing = thrown(() => Policy.fromFile(path.join(dir, "nope.yaml")));
    expect(missing.code).toBe("validation");
    expect(missing.message).toMatch(/cannot read the policy file .*nope\.yaml/);
  });

  it.each([
    ["a: !\n", /rule "a": expected a check string, found nothing \(in YAML an unquoted ! or @ is not text\)/],
    ["a: @\n", /not valid YAML or JSON: .*quoted check strings/],
    ['"a": "@"\n"a": "!"\n', /duplicated mapping key/],
    ["- role:admin\n", /expected a map of rule names to check strings, found a list/],
    ["a: true\n", /rule "a": expected a check string, found a boolean/],
  ])("rejects the malformed file %j", (text, why) => {
    const e = thrown(() => Policy.parse(text, "f.yaml"));
    expect(e.code).toBe("validation");
    expect(e.message).toMatch(why);
  });

  it("accepts an empty file as no overrides", () => {
    expect(Policy.parse("# nothing here\n").rules()).toEqual(Policy.defaults().rules());
  });
});

describe("overrides", () => {
  it("replace a default operation", () => {
    const p = Policy.load({ "baremetal:node:get": "rule:is_admin" });
    expect(p.rules()["baremetal:node:get"]).toBe("rule:is_admin");
    expect(p.check("baremetal:node:get", callers.ownerMember, target).allowed).toBe(false);
    expect(p.check("baremetal:node:get", callers.systemAdmin, target).allowed).toBe(true);
  });

  it("replace a persona for every operation that uses it", () => {
    // Lessees lose member rights, owners keep them.
    const p = Policy.load({ project_member: "role:member and project_id:%(node.owner)s" });
    expect(p.check("baremetal:node:update", callers.lesseeMember, target).allowed).toBe(false);
    expect(p.check("baremetal:node:update", callers.ownerMember, target).allowed).toBe(true);
    expect(p.check("baremetal:node:update_extra", callers.lesseeAdmin, target).allowed).toBe(false);
  });

  it("may add helper rules", () => {
    const p = Policy.load({ tenant_ops: "role:member and project_id:ops", "baremetal:node:validate": "rule:is_admin or rule:tenant_ops" });
    expect(p.check("baremetal:node:validate", { projectId: "ops", roles: ["member"] }, {}).allowed).toBe(true);
    expect(p.rules().tenant_ops).toBe("role:member and project_id:ops");
  });

  it("leave the defaults untouched", () => {
    Policy.load({ "baremetal:node:get": "@" });
    expect(Policy.defaults().check("baremetal:node:get", callers.otherMember, target).allowed).toBe(false);
    const rules = Policy.defaults().rules();
    rules["baremetal:node:get"] = "@";
    expect(Policy.defaults().rules()["baremetal:node:get"]).toBe(DEFAULT_RULES["baremetal:node:get"]);
  });
});

describe("enforce", () => {
  const p = Policy.defaults();

  it("returns quietly when allowed", () => {
    expect(() => p.enforce("baremetal:node:vif:attach", callers.ownerMember, target)).not.toThrow();
  });

  it("throws a 403 auth error carrying the explanation when denied", () => {
    const e = thrown(() => p.enforce("baremetal:node:vif:attach", callers.lesseeReader, target));
    expect(e.code).toBe("auth");
    expect(e.httpStatus).toBe(403);
    expect(e.message).toBe(p.check("baremetal:node:vif:attach", callers.lesseeReader, target).explanation);
    expect(e.message).toMatch(/^baremetal:node:vif:attach denied for project p3 \(roles reader\)/);
  });
});
