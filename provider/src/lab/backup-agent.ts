/**
 * OUR EMULATOR's stand-in for a backup agent booted on the machine. On real hardware the
 * provider's backup image boots a small agent (a site's ramdisk) that reads the machine's disk
 * and streams it to the backup target; the lab has no machine, so when an emulated system boots a
 * CD that is a backup image (it holds `baremetal-backup/job.json`, see
 * provider/src/backup/node-disk.ts), the lab BMC runs this in its own process instead: it reads
 * the job from the ISO, reads the emulated disk (a file per system, `diskDir` of the lab) and
 * runs the same agent code a real image would (runNodeBackup) against the real target the job
 * names, with the job's credentials. Only the machine is emulated; the backup is real.
 */
import { open } from "node:fs/promises";
import { BACKUP_JOB_PATH, type DiskSource, parseBackupJob, runNodeBackup } from "../backup/node-disk";
import { backupTargetFor } from "../drivers/backup-targets";
import { readIsoFile } from "./iso-read";

export interface LabBackupOutcome {
  backupId: string;
  prefix: string;
  bytesRead: number;
  bytesStored: number;
  chunksStored: number;
  chunksReused: number;
}

/** Whether an image is a backup image (an ISO holding the job file). */
export function isBackupImage(image: Buffer): boolean {
  return readIsoFile(image, BACKUP_JOB_PATH) !== undefined;
}

/** A disk file as the agent reads a block device: cell by cell, zero cells left out. */
export async function fileDisk(path: string): Promise<DiskSource & { close(): Promise<void> }> {
  const fh = await open(path, "r");
  const { size } = await fh.stat();
  return {
    sizeBytes: size,
    async *extents(cellBytes: number, signal?: AbortSignal) {
      const zero = Buffer.alloc(cellBytes);
      for (let offset = 0; offset < size; offset += cellBytes) {
        signal?.throwIfAborted();
        const buf = Buffer.alloc(Math.min(cellBytes, size - offset));
        const { bytesRead } = await fh.read(buf, 0, buf.length, offset);
        const data = buf.subarray(0, bytesRead);
        if (!data.equals(zero.subarray(0, data.length))) yield { offset, data };
      }
    },
    close: () => fh.close(),
  };
}

/** Runs the job of a backup image against the disk file; resolves with what it stored, or rejects (no manifest written then). */
export async function runLabBackupAgent(image: Buffer, diskPath: string, signal?: AbortSignal): Promise<LabBackupOutcome> {
  const raw = readIsoFile(image, BACKUP_JOB_PATH);
  if (!raw) throw new Error(`the CD holds no ${BACKUP_JOB_PATH}`);
  const job = parseBackupJob(raw);
  const target = backupTargetFor(job.target.settings, job.target.credentials, `backup target ${job.target.name}`, signal);
  const disk = await fileDisk(diskPath);
  try {
    const m = await runNodeBackup(job, disk, target, { signal, backend: "lab-node-agent" });
    return { backupId: m.id, prefix: job.prefix, bytesRead: m.stats.bytesRead, bytesStored: m.stats.bytesStored, chunksStored: m.stats.chunksStored, chunksReused: m.stats.chunksReused };
  } finally {
    await disk.close().catch(() => undefined);
    await target.close().catch(() => undefined);
  }
}
