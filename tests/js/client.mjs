// Resolves credentials with one AWS SDK for JavaScript v3 provider, then calls
// GetCallerIdentity with them and prints `PROVIDER=… ARN=…`.
//
//   node client.mjs <fromHttp|fromContainerMetadata|fromInstanceMetadata|default> <sts-endpoint>
//
// The broker is found through the usual environment: AWS_CONTAINER_CREDENTIALS_FULL_URI with
// AWS_CONTAINER_AUTHORIZATION_TOKEN[_FILE] for the ECS endpoint, or
// AWS_EC2_METADATA_SERVICE_ENDPOINT for IMDS.
import {
  fromContainerMetadata,
  fromHttp,
  fromInstanceMetadata,
  fromNodeProviderChain,
} from "@aws-sdk/credential-providers";
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";

const [mode, endpoint] = process.argv.slice(2);
const providers = {
  fromHttp: () => fromHttp({}),
  fromContainerMetadata: () => fromContainerMetadata({ maxRetries: 0, timeout: 2000 }),
  fromInstanceMetadata: () => fromInstanceMetadata({ maxRetries: 0, timeout: 2000 }),
  default: () => fromNodeProviderChain(),
};
if (!providers[mode] || !endpoint) {
  console.error("usage: node client.mjs <" + Object.keys(providers).join("|") + "> <sts-endpoint>");
  process.exit(2);
}
const credentials = providers[mode]();
const resolved = await credentials();
if (!resolved.accessKeyId || !resolved.secretAccessKey || !resolved.sessionToken) {
  throw new Error(`${mode}: incomplete credentials`);
}
if (!(resolved.expiration instanceof Date)) {
  throw new Error(`${mode}: no expiration`);
}
const sts = new STSClient({ region: "us-east-1", endpoint, credentials });
const who = await sts.send(new GetCallerIdentityCommand({}));
console.log(`PROVIDER=${mode} ARN=${who.Arn}`);
