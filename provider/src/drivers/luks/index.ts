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
export { openLuks2, readLuks2Header } from "./userspace";
export type { Luks2Header, Luks2Segment, Luks2Volume, OpenOptions, ReadAt } from "./userspace";
