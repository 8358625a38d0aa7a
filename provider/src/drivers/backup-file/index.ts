export { FileBackupTarget, FILE_FAMILY, parseFileAddress, type FileObjectInfo } from "./driver";
export { checkKey, checkPrefix, checkMetadata } from "./keys";
