export { LOCAL_FAMILY, LocalKeyManager, createLocalKeyManager, parseLocalAddress } from "./driver";
