export { VAULT_FAMILY, createVaultDriver, parseKeyId } from "./driver";
