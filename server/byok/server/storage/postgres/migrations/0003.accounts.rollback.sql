DROP TABLE provider_keys;
DROP TABLE api_keys;
