export { S3BackupTarget, S3_FAMILY, DEFAULT_PART_BYTES, MIN_PART_BYTES, type S3DriverOptions, type MultipartUploadInfo, type ObjectInfoWithMetadata } from "./driver";
export { parseS3Address, describeEndpoint } from "./client";
