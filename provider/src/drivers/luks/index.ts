export { Luks } from "./luks";
export type {
  FormatOptions,
  LuksDump,
  LuksKeyslot,
  LuksOptions,
  LuksSegment,
  Pbkdf,
  PbkdfOptions,
  ReencryptOptions,
  ReencryptProgress,
  ReencryptResult,
  RotateOptions,
  RotationCheckpoint,
  RotationResult,
  RotationStep,
} from "./luks";
