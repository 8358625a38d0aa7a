export { BARBICAN_FAMILY, createBarbicanDriver, secretUuid } from "./driver";
