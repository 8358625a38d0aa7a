/** The provider's version: GetPluginInfo, the schema and the SDK carry it (a test keeps it equal to provider/package.json). */
export const PROVIDER_VERSION = "0.1.0";
