// Scans one file with Cloudmersive's published client against the server
// at BASE (the gateway's API server in the tests) and prints the result
// object as JSON: node scan.js BASE APIKEY FILE [advanced]
const Client = require('cloudmersive-virus-api-client');
const fs = require('fs');

const [base, key, file, mode] = process.argv.slice(2);
const client = Client.ApiClient.instance;
client.basePath = base;
client.authentications['Apikey'].apiKey = key;
const api = new Client.ScanApi();
const done = (error, data) => {
  if (error) {
    console.log(JSON.stringify({ error: String(error), status: error.status || null }));
    process.exit(3);
  }
  console.log(JSON.stringify(data));
};
const input = fs.readFileSync(file);
if (mode === 'advanced') {
  api.scanFileAdvanced(input, { allowExecutables: true, allowScripts: true }, done);
} else {
  api.scanFile(input, done);
}
