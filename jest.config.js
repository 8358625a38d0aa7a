/** Unit tests live beside the code (provider/src/**\/*.test.ts); e2e tests under test/e2e. */
module.exports = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": ["ts-jest", { tsconfig: "tsconfig.json", diagnostics: { warnOnly: false } }] },
  testMatch: ["<rootDir>/provider/src/**/*.test.ts", "<rootDir>/test/**/*.test.ts"],
  testTimeout: 60000,
  // Two test files at once even on a 2-core machine: the e2e files spend most of their time waiting
  // on peers and the engine (start-ups, cryptoperiods, timeouts), so the suite's wall time drops by
  // far more than the contention costs.
  maxWorkers: 2,
  // Built copies of packages (the compiled SDK, example installs) are not test sources.
  modulePathIgnorePatterns: ["<rootDir>/sdk/nodejs/bin/", "<rootDir>/examples/.*/node_modules/", "<rootDir>/test/e2e/.work/"],
};
