/** Unit tests live beside the code (provider/src/**\/*.test.ts); e2e tests under test/e2e. */
module.exports = {
  testEnvironment: "node",
  transform: { "^.+\\.ts$": ["ts-jest", { tsconfig: "tsconfig.json", diagnostics: { warnOnly: false } }] },
  testMatch: ["<rootDir>/provider/src/**/*.test.ts", "<rootDir>/test/**/*.test.ts"],
  testTimeout: 60000,
  // Built copies of packages (the compiled SDK, example installs) are not test sources.
  modulePathIgnorePatterns: ["<rootDir>/sdk/nodejs/bin/", "<rootDir>/examples/.*/node_modules/", "<rootDir>/test/e2e/.work/"],
};
