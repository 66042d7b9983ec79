DROP TABLE space_profiles;
DROP TABLE spaces;
DROP TABLE model_profiles;
