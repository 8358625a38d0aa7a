/**
 * The default multi-tenancy policy: OpenStack Ironic's secure-RBAC defaults, restated for our
 * credentials model. Facts come from Ironic's `ironic/common/policy.py` (the persona constants
 * `SYSTEM_ADMIN`, `PROJECT_MEMBER`, ... and the `DocumentedRuleDefault` of each operation), the
 * Ironic "Secure RBAC" admin guide (https://docs.openstack.org/ironic/latest/admin/secure-rbac.html)
 * and Keystone's default roles (`keystone/cmd/bootstrap.py`).
 *
 * ## Credentials mapping (how a caller becomes oslo.policy credentials)
 *
 * Our caller is the provider configuration's `project` and `roles` (see `config.ts`). Keystone
 * would hand Ironic a token scoped either to the *system* or to a *project*; we have no tokens, so:
 *
 * - `project` = {@link SYSTEM_PROJECT} stands for a **system-scoped** token: the credentials get
 *   `system_scope: "all"` and `is_admin_project: true`, and no `project_id` (system-scoped Keystone
 *   tokens carry none, per the Secure RBAC guide). So `role:admin and system_scope:all` (Ironic's
 *   SYSTEM_ADMIN) means "role admin in the system project".
 * - any other `project` is a **project-scoped** token: `project_id` = `project_name` = the project
 *   (we only know ids, so names are ids), `is_admin_project: false`.
 * - no `project`: an unscoped caller. Keystone puts no roles in unscoped tokens, so the roles are
 *   dropped: such a caller matches only rules that need nothing (`@`, `""`).
 * - roles are compared case-insensitively (as oslo.policy does) and expanded by Keystone's default
 *   role implications (admin -> manager -> member -> reader), as Keystone expands them into tokens.
 *   `service` implies nothing.
 * - `rule:service_role` compares `project_name` with the target key `config.service_project_name`,
 *   which Ironic fills from its configuration; we always fill it with {@link SERVICE_PROJECT}.
 * - like Ironic's `check_owner_policy`, the credential values (`project_id`, `project_name`,
 *   `system_scope`, `is_admin_project`) are also visible as target keys, under the caller's target.
 *
 * ## Rule names
 *
 * Ironic writes its operation defaults by pasting persona constants together in Python; here each
 * constant is a named rule (its name is the constant in lower case, its check string is Ironic's),
 * and each operation refers to them with `rule:`. The expanded check strings are the same as
 * Ironic's (the tests compare them on a matrix of callers), and an operator can override one
 * persona for every operation at once.
 */

/** The project that stands for Keystone's system scope (see the mapping above). */
export const SYSTEM_PROJECT = "system";

/** The project whose `service` role holders match `rule:service_role` (Ironic: `[DEFAULT]service_project_name`, default `service`). */
export const SERVICE_PROJECT = "service";

/** Keystone's default role implications since 2023.2 (`keystone/cmd/bootstrap.py`): admin -> manager -> member -> reader. */
export const IMPLIED_ROLES: Readonly<Record<string, readonly string[]>> = {
  admin: ["manager"],
  manager: ["member"],
  member: ["reader"],
};

/** The operations the provider asks the policy about (Ironic's policy names). */
export const OPERATIONS = [
  "baremetal:node:create",
  "baremetal:node:delete",
  "baremetal:node:get",
  "baremetal:node:list",
  "baremetal:node:list_all",
  "baremetal:node:update",
  "baremetal:node:update_extra",
  "baremetal:node:update_instance_info",
  "baremetal:node:validate",
  "baremetal:node:set_provision_state",
  "baremetal:node:set_power_state",
  "baremetal:node:get_console",
  "baremetal:node:vif:attach",
  "baremetal:node:vif:detach",
  "baremetal:port:get",
  "baremetal:port:list",
  "baremetal:port:create",
  "baremetal:port:update",
  "baremetal:port:delete",
  "baremetal:network:get",
  "baremetal:network:create",
  "baremetal:network:update",
  "baremetal:network:delete",
  "baremetal:network:attach",
  "baremetal:key:get",
  "baremetal:key:create",
  "baremetal:key:update",
  "baremetal:key:delete",
  "baremetal:volume:create",
  "baremetal:volume:update",
  "baremetal:volume:delete",
  "baremetal:volume:attach",
  "baremetal:volume:detach",
  "baremetal:volume:backup",
  "baremetal:allocation:get",
  "baremetal:allocation:list",
  "baremetal:allocation:list_all",
  "baremetal:allocation:create",
  "baremetal:allocation:create_restricted",
  "baremetal:allocation:delete",
  "baremetal:allocation:update",
  "baremetal:lease:create",
  "baremetal:lease:delete",
] as const;

export type Operation = (typeof OPERATIONS)[number];

/**
 * Helper rules. Sources: the constant of the same name (upper case) in ironic/common/policy.py,
 * except where a comment says otherwise.
 */
const PERSONAS: Record<string, string> = {
  // Ironic rule `service_role` (a real rule there, meant to be overridden).
  service_role: "role:service and project_name:%(config.service_project_name)s",

  system_admin: "role:admin and system_scope:all",
  system_member: "(role:member and system_scope:all) or rule:service_role",
  system_reader: "(role:reader and system_scope:all) or (role:service and system_scope:all) or rule:service_role",
  system_service: "role:service and system_scope:all",

  project_admin: "role:admin and project_id:%(node.owner)s",
  project_manager: "role:manager and (project_id:%(node.owner)s or project_id:%(node.lessee)s)",
  project_member: "role:member and (project_id:%(node.owner)s or project_id:%(node.lessee)s)",
  project_reader: "role:reader and (project_id:%(node.owner)s or project_id:%(node.lessee)s)",
  project_service: "role:service and project_id:%(node.owner)s",

  // PROJECT_OWNER_* and PROJECT_LESSEE_* in Ironic.
  owner_admin: "role:admin and project_id:%(node.owner)s",
  owner_manager: "role:manager and project_id:%(node.owner)s",
  owner_member: "role:member and project_id:%(node.owner)s",
  owner_reader: "role:reader and project_id:%(node.owner)s",
  lessee_admin: "role:admin and project_id:%(node.lessee)s",
  lessee_manager: "role:manager and project_id:%(node.lessee)s",

  allocation_owner_member: "role:member and project_id:%(allocation.owner)s",
  // A lease's owner (the project that owned the node when it was leased): not Ironic's, esi-leap's.
  lease_owner_manager: "role:manager and project_id:%(lease.owner)s",
  allocation_owner_reader: "role:reader and project_id:%(allocation.owner)s",

  // Tenant networks (Neutron's model: a project's members manage its own networks).
  network_owner_member: "role:member and project_id:%(network.owner)s",
  network_owner_reader: "role:reader and project_id:%(network.owner)s",
  // Encryption keys: a project's members, not only its admins (Cinder wants admin for encrypted volume types).
  key_owner_member: "role:member and project_id:%(key.owner)s",
  key_owner_reader: "role:reader and project_id:%(key.owner)s",
  volume_owner_member: "role:member and project_id:%(volume.owner)s",

  api_reader: "(role:reader) or (role:service)",

  // Composites, pasted together in Ironic as '(' + A + ') or (' + B + ')'.
  system_or_project_member: "(rule:system_member) or (rule:project_member) or (rule:system_service)",
  system_or_project_reader: "(rule:system_reader) or (rule:project_reader) or (rule:project_service)",
  system_or_owner_member_and_lessee_admin:
    "(rule:system_member) or (rule:system_service) or (rule:owner_member) or (rule:lessee_admin) or (rule:lessee_manager) or (rule:project_service)",
  system_member_or_owner_member:
    "(rule:system_member) or (rule:system_service) or (rule:owner_member) or (rule:project_service)",
  system_or_owner_reader: "(rule:system_reader) or (rule:system_service) or (rule:owner_reader) or (rule:project_service)",
  allocation_member: "(rule:system_member) or (rule:allocation_owner_member)",
  allocation_reader: "(rule:system_reader) or (rule:allocation_owner_reader)",
  allocation_creator: "(rule:system_member) or (role:member)",
};

/**
 * The pre-RBAC rule names of Ironic, kept because operators' policy files use them.
 * `is_node_owner`, `is_node_lessee` and `is_allocation_owner` are Ironic's check strings verbatim.
 * `is_admin` and `is_observer` are NOT: Ironic's legacy strings (`rule:admin_api or (rule:is_member
 * and role:baremetal_admin)`, where `admin_api` is `role:admin or role:administrator`) would make
 * every project's admin a cloud admin. The Secure RBAC guide says the legacy `baremetal_admin` is
 * identical to a system-scoped admin and `baremetal_observer` to a system-scoped reader, so these
 * are the system personas.
 */
const LEGACY: Record<string, string> = {
  is_admin: "rule:system_admin",
  is_observer: "rule:system_reader",
  is_node_owner: "project_id:%(node.owner)s",
  is_node_lessee: "project_id:%(node.lessee)s",
  is_allocation_owner: "project_id:%(allocation.owner)s",
};

/** Each operation's default: the `check_str` of its DocumentedRuleDefault in ironic/common/policy.py. */
const OPERATION_DEFAULTS: Record<Operation, string> = {
  // Enrolling and deleting hardware records is the operator's (Ironic: system-scoped members
  // create nodes; deletion is kept to system admins here, stricter than Ironic's default).
  "baremetal:node:create": "rule:system_member",
  "baremetal:node:delete": "rule:system_admin",
  "baremetal:node:get": "rule:system_or_project_reader",
  "baremetal:node:list": "rule:api_reader",
  "baremetal:node:list_all": "rule:system_reader",
  "baremetal:node:update": "rule:system_or_project_member",
  "baremetal:node:update_extra": "rule:system_or_project_member",
  "baremetal:node:update_instance_info": "rule:system_or_owner_member_and_lessee_admin",
  "baremetal:node:validate": "rule:system_or_owner_member_and_lessee_admin",
  "baremetal:node:set_provision_state": "rule:system_or_owner_member_and_lessee_admin",
  "baremetal:node:set_power_state": "rule:system_or_project_member",
  // The node's serial console (Ironic: GET /nodes/{node_ident}/states/console). Not Ironic's
  // default (SYSTEM_MEMBER_OR_OWNER_MEMBER, which leaves the lessee out): the lessee's admins and
  // managers too, the same callers who may deploy the node (set_provision_state), because a tenant
  // that deploys a leased machine needs its console to debug the boot.
  "baremetal:node:get_console": "rule:system_or_owner_member_and_lessee_admin",
  "baremetal:node:vif:attach": "rule:system_or_owner_member_and_lessee_admin",
  "baremetal:node:vif:detach": "rule:system_or_owner_member_and_lessee_admin",
  // Ports are checked against their node's owner and lessee (Ironic passes node.owner/node.lessee).
  "baremetal:port:get": "rule:system_or_project_reader",
  "baremetal:port:list": "rule:api_reader",
  // Recording where a node is cabled is the operator's (Ironic: port create is system-scoped).
  "baremetal:port:create": "rule:system_member",
  "baremetal:port:update": "rule:system_member",
  "baremetal:port:delete": "rule:system_member",
  // Not Ironic's (Neutron's): a project manages its own networks; only its members attach ports to them.
  "baremetal:network:get": "(rule:system_reader) or (rule:network_owner_reader)",
  "baremetal:network:create": "(rule:system_member) or (rule:network_owner_member)",
  "baremetal:network:update": "(rule:system_member) or (rule:network_owner_member)",
  "baremetal:network:delete": "(rule:system_member) or (rule:network_owner_member)",
  "baremetal:network:attach": "(rule:system_member) or (rule:network_owner_member)",
  "baremetal:key:get": "(rule:system_reader) or (rule:key_owner_reader)",
  "baremetal:key:create": "(rule:system_member) or (rule:key_owner_member)",
  "baremetal:key:update": "(rule:system_member) or (rule:key_owner_member)",
  "baremetal:key:delete": "(rule:system_member) or (rule:key_owner_member)",
  "baremetal:volume:create": "(rule:system_member) or (rule:volume_owner_member)",
  "baremetal:volume:update": "(rule:system_member) or (rule:volume_owner_member)",
  "baremetal:volume:delete": "(rule:system_member) or (rule:volume_owner_member)",
  "baremetal:volume:attach": "(rule:system_member) or (rule:volume_owner_member)",
  "baremetal:volume:detach": "(rule:system_member) or (rule:volume_owner_member)",
  // Not Ironic's (Cinder's backup:create): a project backs up its own volumes.
  "baremetal:volume:backup": "(rule:system_member) or (rule:volume_owner_member)",
  "baremetal:allocation:get": "rule:allocation_reader",
  "baremetal:allocation:list": "rule:api_reader",
  "baremetal:allocation:list_all": "rule:system_reader",
  "baremetal:allocation:create": "rule:allocation_creator",
  "baremetal:allocation:create_restricted": "rule:system_member",
  "baremetal:allocation:delete": "rule:allocation_member",
  "baremetal:allocation:update": "rule:allocation_member",
  // Leases (not Ironic's: MOC's esi-leap, esi_leap/common/policy.py). There `esi_leap:lease:create`
  // is `rule:is_admin or rule:is_owner` (the roles admin/esi_leap_admin, owner/esi_leap_owner) and
  // the API also requires the node to be the caller project's; here the owner persona is the
  // node's owner project with the manager role (Keystone's project manager), and the admins are
  // system-scoped. Ending a lease early: its owner's managers and the system admins (esi-leap
  // also lets the lessee end it; a lessee who wants out releases its allocation instead).
  "baremetal:lease:create": "(rule:system_admin) or (rule:owner_manager)",
  "baremetal:lease:delete": "(rule:system_admin) or (rule:lease_owner_manager)",
};

/** The effective rule table when no policy file overrides anything. */
export const DEFAULT_RULES: Readonly<Record<string, string>> = Object.freeze({
  ...PERSONAS,
  ...LEGACY,
  ...OPERATION_DEFAULTS,
});
